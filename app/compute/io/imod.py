"""IMOD companion files: tilt angles (.tlt, .rawtlt), transforms (.xf), X-axis tilts (.xtilt), view lists,
binary models (.mod), command files (.com) and etomo project files (.edf).

Conventions (IMOD's, kept unchanged here; :mod:`tomoguide.geometry` builds on them):

* ``.tlt`` / ``.rawtlt`` / ``.xtilt``: one angle in degrees per line, one line per view, in stack order.
  ``.rawtlt`` holds the nominal (stage) angles, ``.tlt`` the refined ones written by tiltalign.
* ``.xf``: one line per view with six numbers ``A11 A12 A21 A22 DX DY``. A point ``(X, Y)`` of the raw
  image, measured from the image centre in pixels, goes to ``(X', Y')`` of the aligned image by
  ``X' = A11 X + A12 Y + DX`` and ``Y' = A21 X + A22 Y + DY``. Shifts are in pixels of the stack the
  transforms were computed for.
* View lists (EXCLUDELIST, etc.) are 1-based, written as comma-separated numbers and ranges: ``1-3,7``.
* ``.mod``: IMOD binary model, big-endian, ``IMODV1.2`` chunked layout (see :func:`read_mod_points`).

Readers are strict by default (a malformed line raises :class:`FormatError` naming file and line);
``strict=False`` warns with :class:`FormatWarning` and skips what it cannot read.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from tomoguide.compute.io.errors import FormatError, problem

__all__ = [
    "CtfplotterDefocus",
    "ModPoints",
    "describe",
    "format_view_list",
    "parse_view_list",
    "read_com",
    "read_ctfplotter_defocus",
    "read_dose_list",
    "read_edf",
    "read_exclude_list",
    "read_mod_points",
    "read_newst_com",
    "read_rawtlt",
    "read_tilt_com",
    "read_tilt_table",
    "read_tlt",
    "read_xf",
    "read_xtilt",
    "write_mod_points",
    "write_tlt",
    "write_xf",
    "write_xtilt",
]

PathType = str | PathLike[str]


# --------------------------------------------------------------------------------------------------------
# Text tables: .tlt .rawtlt .xtilt .xf
# --------------------------------------------------------------------------------------------------------


def _read_table(path: PathType, ncols: int, what: str, strict: bool) -> np.ndarray:
    """Read a whitespace-separated table of ``ncols`` floats per non-blank line -> (n, ncols) float64."""
    path = Path(path)
    try:
        text = path.read_text(encoding="ascii", errors="strict")
    except UnicodeDecodeError as err:
        raise FormatError(path, f"byte {err.start}", f"not a text {what} file ({err.reason})") from err
    lines = text.splitlines()
    if text.strip() and not text.endswith(("\n", "\r")):  # IMOD ends every line: a value may be cut short
        problem(strict, path, f"line {len(lines)}", "the file ends in the middle of a line (no line end): cut short?")
    rows: list[list[float]] = []
    for lineno, line in enumerate(lines, start=1):
        stripped = line.strip()
        if not stripped:
            continue
        parts = stripped.split()
        try:
            values = [float(p) for p in parts]
        except ValueError:
            problem(strict, path, f"line {lineno}", f"expected {ncols} number(s) for {what}, got {stripped!r}")
            continue
        if len(values) != ncols:
            problem(
                strict, path, f"line {lineno}",
                f"expected {ncols} number(s) for {what}, got {len(values)}: {stripped!r}",
            )
            continue
        if not all(np.isfinite(values)):
            problem(strict, path, f"line {lineno}", f"non-finite value in {what}: {stripped!r}")
            continue
        rows.append(values)
    if not rows:
        # An empty angle file cannot describe a tilt series: always an error.
        raise FormatError(path, "values", f"no {what} values found (an empty file, or cut short?)")
    return np.asarray(rows, dtype=np.float64).reshape(-1, ncols)


def read_tlt(path: PathType, *, strict: bool = True) -> np.ndarray:
    """Read an IMOD ``.tlt`` or ``.rawtlt`` file.

    Returns:
        (n,) float64 tilt angles in degrees, in stack (file) order.
    """
    angles = _read_table(path, 1, "tilt angle", strict)[:, 0]
    bad = np.flatnonzero(np.abs(angles) > 90.0)
    if bad.size:
        problem(strict, path, f"value {int(bad[0]) + 1}", f"tilt angle {angles[bad[0]]:g}° is outside ±90°")
    return angles


def read_xtilt(path: PathType, *, strict: bool = True) -> np.ndarray:
    """Read an IMOD ``.xtilt`` file: (n,) float64 X-axis tilt per view in degrees (tiltalign's output)."""
    return _read_table(path, 1, "X-axis tilt", strict)[:, 0]


def read_xf(path: PathType, *, strict: bool = True) -> np.ndarray:
    """Read an IMOD ``.xf`` file.

    Returns:
        (n, 6) float64 rows ``A11 A12 A21 A22 DX DY`` (shifts in px; see the module docstring).
    """
    return _read_table(path, 6, "transform (A11 A12 A21 A22 DX DY)", strict)


def _read_rows(path: PathType, what: str, strict: bool) -> list[tuple[int, list[float]]]:
    """Read whitespace-separated numbers, any count per line -> [(line number, values)] of the non-blank lines.

    Same checks as :func:`_read_table` (text, line ends, numbers, finite values) but no fixed column count.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="ascii", errors="strict")
    except UnicodeDecodeError as err:
        raise FormatError(path, f"byte {err.start}", f"not a text {what} file ({err.reason})") from err
    lines = text.splitlines()
    if text.strip() and not text.endswith(("\n", "\r")):
        problem(strict, path, f"line {len(lines)}", "the file ends in the middle of a line (no line end): cut short?")
    rows: list[tuple[int, list[float]]] = []
    for lineno, line in enumerate(lines, start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            values = [float(p) for p in stripped.split()]
        except ValueError:
            problem(strict, path, f"line {lineno}", f"expected numbers for {what}, got {stripped!r}")
            continue
        if not all(np.isfinite(values)):
            problem(strict, path, f"line {lineno}", f"non-finite value in {what}: {stripped!r}")
            continue
        rows.append((lineno, values))
    if not rows:
        raise FormatError(path, "values", f"no {what} values found (an empty file, or cut short?)")
    return rows


def _rectangular(path: PathType, rows: list[tuple[int, list[float]]], what: str, strict: bool) -> np.ndarray:
    """(n, k) array of rows that all have the first row's column count (others: error / skipped)."""
    ncols = len(rows[0][1])
    keep: list[list[float]] = []
    for lineno, values in rows:
        if len(values) != ncols:
            problem(strict, path, f"line {lineno}",
                    f"expected {ncols} number(s) for {what} (as on line {rows[0][0]}), got {len(values)}")
            continue
        keep.append(values)
    return np.asarray(keep, dtype=np.float64).reshape(-1, ncols)


def _order_column(col: np.ndarray) -> np.ndarray | None:
    """0-based acquisition order when ``col`` is a permutation of 1..n or 0..n-1 (integers), else None."""
    if col.size == 0 or np.abs(col).max() > 1e9 or not np.all(col == np.round(col)):
        return None
    ints = col.astype(np.int64)
    n = ints.size
    for base in (1, 0):
        if np.array_equal(np.sort(ints), np.arange(base, base + n)):
            return ints - base
    return None


def read_tilt_table(path: PathType, *, strict: bool = True) -> dict[str, np.ndarray]:
    """Read a one- or multi-column tilt-angle file (``.rawtlt``, ``.tlt``, AreTomo's angle file, ...).

    The first column is the tilt angle in degrees (stack order, one line per view). Further columns, which
    other programs add, are recognised where their meaning is certain:

    * ``"tilt_deg"``: (n,) float64 column 1, degrees, checked to lie within ±90°.
    * ``"acquisition_order"``: (n,) int64, **0-based**, when a column is a permutation of the integers 1..n
      (AreTomo's ``-AngFile`` second column, the 1-based acquisition index) or 0..n-1.
    * ``"column_K"``: (n,) float64 for any other column ``K`` (1-based column number), unnamed because the
      file does not say what it holds (a dose, a defocus, ...).

    Lines starting with ``#`` are comments. Every line must have the first line's number of columns.
    """
    table = _rectangular(path, _read_rows(path, "tilt angle", strict), "tilt angle", strict)
    angles = table[:, 0]
    bad = np.flatnonzero(np.abs(angles) > 90.0)
    if bad.size:
        problem(strict, path, f"value {int(bad[0]) + 1}", f"tilt angle {angles[bad[0]]:g}° is outside ±90°")
    out: dict[str, np.ndarray] = {"tilt_deg": angles.copy()}
    for k in range(1, table.shape[1]):
        order = _order_column(table[:, k])
        if order is not None and "acquisition_order" not in out:
            out["acquisition_order"] = order
        else:
            out[f"column_{k + 1}"] = table[:, k].copy()
    return out


def read_rawtlt(path: PathType, *, strict: bool = True) -> np.ndarray:
    """Read the tilt angles of a ``.rawtlt`` / ``.tlt`` file with one or more columns.

    Returns:
        (n,) float64 tilt angles in degrees (the first column), in stack order. Extra columns (acquisition
        order, dose, ...) are ignored here; :func:`read_tilt_table` returns them.
    """
    return read_tilt_table(path, strict=strict)["tilt_deg"]


def read_dose_list(path: PathType, *, one_column: str = "dose", strict: bool = True) -> np.ndarray:
    """Read a per-tilt dose list, one line per view in stack order, in IMOD's conventions (mtffilter's
    ``TypeOfDoseFile``): one number per line, or two numbers per line ``prior_dose dose``.

    Args:
        one_column: what a single column holds, which the file itself cannot say: ``"dose"`` (IMOD
            ``TypeOfDoseFile 1``: the dose received by that tilt) or ``"prior"`` (``TypeOfDoseFile 2``: the
            dose accumulated *before* that tilt, RELION's ``rlnMicrographPreExposure``, Warp's ``Dose``).

    Returns:
        (n, 2) float64, e⁻/Å²: column 0 = prior accumulated dose (pre-exposure) of each view, column 1 = the
        dose of that view's own exposure; NaN where the file does not give it. Two-column files
        (``TypeOfDoseFile 3``) fill both.
    """
    if one_column not in ("dose", "prior"):
        raise ValueError(f"one_column must be 'dose' or 'prior', got {one_column!r}")
    table = _rectangular(path, _read_rows(path, "dose", strict), "dose", strict)
    if table.shape[1] > 2:
        raise FormatError(path, "columns", f"{table.shape[1]} numbers per line: a dose list has 1 (dose or prior "
                          "dose) or 2 (prior dose, dose); not supported")
    neg = np.flatnonzero((table < 0).any(axis=1))
    if neg.size:
        problem(strict, path, f"view {int(neg[0]) + 1}", f"negative dose {table[neg[0]].min():g} e/A^2")
    out = np.full((table.shape[0], 2), np.nan)
    if table.shape[1] == 2:
        out[:] = table
    elif one_column == "dose":
        out[:, 1] = table[:, 0]
    else:
        out[:, 0] = table[:, 0]
    return out


def _write_lines(path: PathType, lines: list[str]) -> None:
    Path(path).write_text("".join(line + "\n" for line in lines), encoding="ascii")


def _angles_1d(angles: Any, name: str) -> np.ndarray:
    arr = np.asarray(angles, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional (n,), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite values")
    return arr


def write_tlt(path: PathType, angles: Any, *, fmt: str = "%7.2f") -> None:
    """Write angles in degrees, one per line, as IMOD does (tiltalign and etomo write ``%7.2f``)."""
    arr = _angles_1d(angles, "angles")
    _write_lines(path, [fmt % a for a in arr])


def write_xtilt(path: PathType, angles: Any, *, fmt: str = "%7.2f") -> None:
    """Write X-axis tilts in degrees, one per line (same layout as ``.tlt``)."""
    write_tlt(path, angles, fmt=fmt)


def write_xf(path: PathType, rows: Any) -> None:
    """Write (n, 6) rows ``A11 A12 A21 A22 DX DY`` in IMOD's fixed format (4 x ``%12.7f``, 2 x ``%12.3f``).

    (n, 2, 3) matrices ``[[A11, A12, DX], [A21, A22, DY]]`` are accepted too.
    """
    arr = np.asarray(rows, dtype=np.float64)
    if arr.ndim == 3 and arr.shape[1:] == (2, 3):
        arr = np.stack([arr[:, 0, 0], arr[:, 0, 1], arr[:, 1, 0], arr[:, 1, 1], arr[:, 0, 2], arr[:, 1, 2]], 1)
    if arr.ndim != 2 or arr.shape[1] != 6:
        raise ValueError(f"xf rows must have shape (n, 6) or (n, 2, 3), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("xf rows contain non-finite values")
    _write_lines(path, ["%12.7f%12.7f%12.7f%12.7f%12.3f%12.3f" % tuple(r) for r in arr])


# --------------------------------------------------------------------------------------------------------
# View lists
# --------------------------------------------------------------------------------------------------------

_RANGE = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


def parse_view_list(text: str) -> list[int]:
    """Parse an IMOD view list such as ``"1-3,7"`` into ``[1, 2, 3, 7]`` (1-based, as IMOD writes them).

    Items are separated by commas (or blanks); each item is a number or an ascending range ``a-b``.
    The result keeps the order given and drops repeats. An empty text gives ``[]``.

    Raises:
        ValueError: naming the text and the bad item, for anything else (zero, descending ranges, words).
    """
    items = [item for item in re.split(r"[,\s]+", text.strip()) if item] if text.strip() else []
    out: list[int] = []
    seen: set[int] = set()
    for item in items:
        m = _RANGE.match(item)
        if m is None:
            raise ValueError(f"view list {text!r}: cannot read item {item!r} (expected N or A-B)")
        start = int(m.group(1))
        stop = int(m.group(2)) if m.group(2) is not None else start
        if start < 1:
            raise ValueError(f"view list {text!r}: views are numbered from 1, got {start}")
        if stop < start:
            raise ValueError(f"view list {text!r}: range {item!r} is descending")
        for v in range(start, stop + 1):
            if v not in seen:
                seen.add(v)
                out.append(v)
    return out


def format_view_list(views: Any) -> str:
    """Format 1-based view numbers as IMOD does, compacting runs: ``[1, 2, 3, 7] -> "1-3,7"``.

    The numbers are sorted and repeats dropped; an empty input gives ``""``.
    """
    vals = sorted({int(v) for v in views})
    if vals and vals[0] < 1:
        raise ValueError(f"view numbers are 1-based, got {vals[0]}")
    parts: list[str] = []
    i = 0
    while i < len(vals):
        j = i
        while j + 1 < len(vals) and vals[j + 1] == vals[j] + 1:
            j += 1
        parts.append(str(vals[i]) if j == i else f"{vals[i]}-{vals[j]}")
        i = j + 1
    return ",".join(parts)


# --------------------------------------------------------------------------------------------------------
# .com and .edf
# --------------------------------------------------------------------------------------------------------

_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _convert_value(text: str) -> Any:
    """'2000' -> 2000, '0.35 0.035' -> [0.35, 0.035], '1,2' -> [1, 2], other text unchanged."""
    parts = [p for p in re.split(r"[,\s]+", text.strip()) if p]
    if parts and all(_NUMBER.match(p) for p in parts):
        nums: list[int | float] = [int(p) if re.match(r"^[+-]?\d+$", p) else float(p) for p in parts]
        return nums[0] if len(nums) == 1 else nums
    return text.strip()


def read_com(path: PathType, *, strict: bool = True) -> dict[str, Any]:
    """Read the key/value lines of an IMOD command file (``tilt.com``, ``newst.com``, ...).

    Lines ``$program -StandardInput`` name the program (stored under the key ``"$program"``, the last one
    given); other ``$`` lines (shell commands) and ``#`` comments are skipped. Each other line is
    ``KEY value...`` (blank- or tab-separated); a key without value is a flag stored as ``True``.
    Values are converted: one number -> int/float, several numbers (comma or blank separated) ->
    list of numbers, anything else -> the text. ``EXCLUDELIST``/``EXCLUDELIST2`` become 1-based lists of
    view numbers (:func:`parse_view_list`). Keys are kept as written (IMOD mixes ``THICKNESS`` and
    ``InputProjections``).
    """
    path = Path(path)
    out: dict[str, Any] = {}
    for lineno, raw in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("$"):
            m = re.match(r"^\$\s*(\S+)\s+-StandardInput\b", line, flags=re.IGNORECASE)
            if m:
                out["$program"] = m.group(1)
            continue
        parts = line.split(None, 1)
        key = parts[0]
        if not re.match(r"^[A-Za-z][A-Za-z0-9_]*$", key):
            problem(strict, path, f"line {lineno}", f"not a KEY value line: {line!r}")
            continue
        if len(parts) == 1:
            out[key] = True
            continue
        value_text = parts[1].strip()
        if key.upper().startswith("EXCLUDELIST"):
            try:
                out[key] = parse_view_list(value_text)
            except ValueError as err:
                problem(strict, path, key, str(err))
            continue
        out[key] = _convert_value(value_text)
    return out


def read_tilt_com(path: PathType, *, strict: bool = True) -> dict[str, Any]:
    """Read ``tilt.com`` (THICKNESS in px, XAXISTILT in degrees, EXCLUDELIST 1-based, ...): see :func:`read_com`."""
    return read_com(path, strict=strict)


def read_newst_com(path: PathType, *, strict: bool = True) -> dict[str, Any]:
    """Read ``newst.com`` (TransformFile, BinByFactor, SizeToOutputInXandY, ...): see :func:`read_com`."""
    return read_com(path, strict=strict)


def read_edf(path: PathType, *, strict: bool = True) -> dict[str, Any]:
    """Read an etomo project file (``.edf``): ``key=value`` lines, ``#`` comments.

    Values are converted as in :func:`read_com` (numbers and number lists; ``-Infinity`` stays text).
    """
    path = Path(path)
    out: dict[str, Any] = {}
    for lineno, raw in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if "=" not in line:
            problem(strict, path, f"line {lineno}", f"expected key=value, got {line!r}")
            continue
        key, value = line.split("=", 1)
        out[key.strip()] = _convert_value(value)
    return out


def read_exclude_list(path: PathType, *, strict: bool = True) -> list[int]:
    """The views an IMOD command file excludes, **0-based**, sorted.

    Reads ``tilt.com`` / ``align.com`` / ``newst.com`` (any ``.com``): the union of ``EXCLUDELIST``,
    ``EXCLUDELIST2`` and tiltalign's ``ExcludeList`` (keys compared without case), each a 1-based IMOD view
    list such as ``1-3,40`` (:func:`parse_view_list`). A file without such a key excludes nothing (``[]``).
    """
    com = read_com(path, strict=strict)
    views: set[int] = set()
    for key, value in com.items():
        if key.upper() not in ("EXCLUDELIST", "EXCLUDELIST2"):
            continue
        if isinstance(value, list):
            views.update(int(v) - 1 for v in value)
    return sorted(views)


# --------------------------------------------------------------------------------------------------------
# ctfplotter / ctfphaseflip defocus files
# --------------------------------------------------------------------------------------------------------

#: flag bits of a version-3 defocus file (IMOD's ctfphaseflip man page, "defocus file")
DEFOCUS_ASTIGMATISM = 1
DEFOCUS_ASTIG_RADIANS = 2
DEFOCUS_PHASE = 4
DEFOCUS_PHASE_RADIANS = 8
DEFOCUS_INVERT_TILTS = 16
DEFOCUS_CUT_ON = 32


@dataclass
class CtfplotterDefocus:
    """An IMOD ctfplotter / ctfphaseflip defocus file, expanded to one value per view.

    Conventions: views are **0-based** here (IMOD writes them 1-based); defocus in Å, positive = underfocus
    (IMOD writes positive underfocus in nm; × 10); ``defocus_u_A`` is IMOD's "defocus 1", ``defocus_v_A`` its
    "defocus 2", ``astigmatism_angle_deg`` its astigmatism axis angle in degrees (from X, counter-clockwise,
    converted from radians when flag 2 is set) — the same mapping as RELION/CTFFIND's DefocusU/V/Angle, as
    Scipion's IMOD plugin converts them. Files without astigmatism give ``defocus_v_A == defocus_u_A`` and
    angle 0. A view that lies in several fitted ranges takes the range whose centre is nearest to it (the
    first such range on ties); views in no range are absent from ``views``.

    Attributes:
        path: the file.
        version: 1 (no version number), 2 (``2`` after the first line) or 3 (header line with flags).
        flags: the version-3 flag sum (astigmatism 1, angle in radians 2, phase 4, phase in radians 8,
            tilt angles inverted 16, cut-on frequency 32); 0 for versions 1 and 2.
        ranges: (m, 2) int64 first and last view (0-based, inclusive) of each line.
        range_tilts_deg: (m, 2) float64 starting and ending tilt angle of each line, degrees, as written.
        views: (k,) int64 0-based views that have a value, ascending.
        defocus_u_A, defocus_v_A, astigmatism_angle_deg: (k,) float64 per view in ``views``.
        phase_shift_deg: (k,) float64 (flag 4) or None.
        cut_on_frequency: (k,) float64 as written (flag 32; 1/nm) or None.
        tilts_inverted: flag 16: the file's tilt angles are inverted against what ctfplotter would write.
    """

    path: Path
    version: int
    flags: int
    ranges: np.ndarray
    range_tilts_deg: np.ndarray
    views: np.ndarray
    defocus_u_A: np.ndarray
    defocus_v_A: np.ndarray
    astigmatism_angle_deg: np.ndarray
    phase_shift_deg: np.ndarray | None = None
    cut_on_frequency: np.ndarray | None = None
    tilts_inverted: bool = False

    @property
    def has_astigmatism(self) -> bool:
        return bool(self.flags & DEFOCUS_ASTIGMATISM)

    def per_view(self, n_views: int) -> dict[str, np.ndarray]:
        """(n_views,) arrays ``defocus_u_A``, ``defocus_v_A``, ``astigmatism_angle_deg`` (and
        ``phase_shift_deg`` when present) indexed by 0-based view, NaN for views the file does not cover."""
        if self.views.size and int(self.views.max()) >= n_views:
            raise FormatError(self.path, "views", f"view {int(self.views.max()) + 1} is beyond the {n_views} "
                              "views of the tilt series")
        out: dict[str, np.ndarray] = {}
        names = ["defocus_u_A", "defocus_v_A", "astigmatism_angle_deg"]
        if self.phase_shift_deg is not None:
            names.append("phase_shift_deg")
        for name in names:
            arr = np.full(n_views, np.nan)
            arr[self.views] = getattr(self, name)
            out[name] = arr
        return out


def read_ctfplotter_defocus(path: PathType, *, strict: bool = True) -> CtfplotterDefocus:
    """Read an IMOD defocus file written by ctfplotter (or for ctfphaseflip), versions 1, 2 and 3.

    Layout (IMOD's ctfphaseflip man page): one line per fitted range of views ``view_start view_end
    tilt_start tilt_end defocus`` (views 1-based, tilts in degrees, defocus in nm, positive underfocus).

    * version 1: no version number; version 2: the first line has a sixth number, ``2``;
    * version 3: a header line ``flags 0 0. 0. 0 3`` (the flag sum, four zeros, the version), then lines
      ``view_start view_end tilt_start tilt_end defocus1 [defocus2 astig_angle] [phase_shift] [cut_on]``:
      ``defocus2 astig_angle`` with flag 1, ``phase_shift`` with flag 4 (degrees, radians with flag 8),
      ``cut_on`` with flag 32.

    Returns:
        :class:`CtfplotterDefocus` (views 0-based, defocus in Å, angles in degrees; see there).

    Raises:
        FormatError: naming the file and line, for a line with the wrong number of columns, a view range that
            is not ``1 <= start <= end``, an unknown version or flag bit.
    """
    path = Path(path)
    rows = _read_rows(path, "defocus", strict)
    version, flags = 1, 0
    first_no, first = rows[0]
    if len(first) == 6 and first[5] == 3 and all(v == 0 for v in first[1:5]):
        version, flags = 3, int(first[0])
        if flags != first[0] or flags < 0 or flags >= 64:
            raise FormatError(path, f"line {first_no}", f"flags {first[0]:g}: not a sum of 1, 2, 4, 8, 16, 32")
        rows = rows[1:]
    elif len(first) == 6 and first[5] == 2:
        version = 2
        rows = [(first_no, first[:5]), *rows[1:]]
    elif len(first) == 6:
        raise FormatError(path, f"line {first_no}", f"version {first[5]:g} after the first line: only defocus file "
                          "versions 2 and 3 are documented (not supported)")
    if not rows:
        raise FormatError(path, "values", "a header line but no defocus lines (cut short?)")
    ncols = 4 + (3 if flags & DEFOCUS_ASTIGMATISM else 1) + (1 if flags & DEFOCUS_PHASE else 0) \
        + (1 if flags & DEFOCUS_CUT_ON else 0)
    keep: list[list[float]] = []
    for lineno, values in rows:
        if len(values) != ncols:
            hint = " (astigmatism or phase columns need the version-3 header line 'flags 0 0. 0. 0 3')" \
                if version < 3 and len(values) > ncols else ""
            problem(strict, path, f"line {lineno}", f"expected {ncols} numbers for a version-{version} defocus line"
                    f"{f' with flags {flags}' if version == 3 else ''}, got {len(values)}{hint}")
            continue
        v0, v1 = values[0], values[1]
        if v0 < 1 or v1 < v0 or v1 > 1_000_000 or v0 != int(v0) or v1 != int(v1):
            problem(strict, path, f"line {lineno}", f"view range {v0:g}-{v1:g}: views are numbered from 1, "
                    "start <= end (whole numbers)")
            continue
        if values[4] <= 0:
            problem(strict, path, f"line {lineno}", f"defocus {values[4]:g} nm: IMOD writes underfocus as positive nm")
            continue
        keep.append(values)
    if not keep:
        raise FormatError(path, "values", "no readable defocus lines")
    table = np.asarray(keep, dtype=np.float64)
    ranges = table[:, :2].astype(np.int64) - 1
    d1 = table[:, 4] * 10.0
    col = 5
    if flags & DEFOCUS_ASTIGMATISM:
        d2 = table[:, 5] * 10.0
        ang = table[:, 6]
        if flags & DEFOCUS_ASTIG_RADIANS:
            ang = np.degrees(ang)
        col = 7
    else:
        d2, ang = d1.copy(), np.zeros_like(d1)
    phase = cut = None
    if flags & DEFOCUS_PHASE:
        phase = table[:, col]
        if flags & DEFOCUS_PHASE_RADIANS:
            phase = np.degrees(phase)
        col += 1
    if flags & DEFOCUS_CUT_ON:
        cut = table[:, col]
    # expand ranges to views: each view takes the range whose centre is nearest (first on ties)
    views = np.arange(int(ranges[:, 0].min()), int(ranges[:, 1].max()) + 1)
    inside = (views[:, None] >= ranges[None, :, 0]) & (views[:, None] <= ranges[None, :, 1])
    dist = np.abs(views[:, None] - ranges.mean(axis=1)[None, :])
    dist = np.where(inside, dist, np.inf)
    covered = inside.any(axis=1)
    views = views[covered]
    pick = np.argmin(dist[covered], axis=1)
    return CtfplotterDefocus(
        path=path, version=version, flags=flags, ranges=ranges, range_tilts_deg=table[:, 2:4].copy(),
        views=views, defocus_u_A=d1[pick], defocus_v_A=d2[pick], astigmatism_angle_deg=ang[pick],
        phase_shift_deg=None if phase is None else phase[pick],
        cut_on_frequency=None if cut is None else cut[pick],
        tilts_inverted=bool(flags & DEFOCUS_INVERT_TILTS),
    )


# --------------------------------------------------------------------------------------------------------
# Binary model (.mod)
# --------------------------------------------------------------------------------------------------------

# Model header after the 8-byte "IMODV1.2" id (IMOD binspec): name[128], xmax ymax zmax objsize (int),
# flags (uint), drawmode mousemode blacklevel whitelevel (int), offsets (3 float), scales (3 float),
# object contour point res thresh (int), pixsize (float), units (int), csum (int), alpha beta gamma (float).
_MODEL_HEADER = struct.Struct(">128s4iI4i3f3f5ifii3f")
# Object header after "OBJT": name[64], extra (16 uint), contsize (int), flags (uint), axis drawmode (int),
# red green blue (float), pdrawsize (int), 8 bytes (symbol ... trans), meshsize surfsize (int).
_OBJECT_HEADER = struct.Struct(">64s16IiIii3fi8Bii")
# Contour header after "CONT": psize (int), flags (uint), time surf (int); then psize x 3 float32.
_CONTOUR_HEADER = struct.Struct(">iIii")
# Mesh header after "MESH": vsize lsize (int), flag (uint), time surf (short); then vsize x 3 float, lsize int.
_MESH_HEADER = struct.Struct(">iiIhh")

_UNITS = {0: "pixel", 1: "m", -3: "mm", -6: "um", -9: "nm", -10: "angstrom", -12: "pm"}


@dataclass
class ModPoints:
    """The points of an IMOD model, flattened.

    Attributes:
        xyz: (n, 3) float64 point coordinates x, y, z in image pixels of the model's image (IMOD model
            coordinates; z is the section number).
        object_id: (n,) int64, 0-based object index of each point.
        contour_id: (n,) int64, 0-based contour index within its object.
        image_shape_xyz: (xmax, ymax, zmax) of the image the model was made on, in px.
        pixel_size: the model's pixel size in ``units``.
        units: "pixel", "nm", "angstrom", ... (IMOD's units code translated).
        object_names: one name per object.
        contours_per_object: number of contours per object (empty contours included).
        point_sizes: (n,) float64 per-point sizes from SIZE chunks, NaN where none is stored.
        flags: the model header flags.
    """

    xyz: np.ndarray
    object_id: np.ndarray
    contour_id: np.ndarray
    image_shape_xyz: tuple[int, int, int]
    pixel_size: float
    units: str
    object_names: list[str] = field(default_factory=list)
    contours_per_object: list[int] = field(default_factory=list)
    point_sizes: np.ndarray = field(default_factory=lambda: np.zeros(0))
    flags: int = 0

    @property
    def n_objects(self) -> int:
        return len(self.contours_per_object)

    @property
    def n_contours(self) -> int:
        return int(sum(self.contours_per_object))


def read_mod_points(path: PathType, *, strict: bool = True) -> ModPoints:
    """Read the point coordinates of an IMOD binary model file (``.mod``, ``IMODV1.2`` layout).

    The file is big-endian: ``IMOD`` ``V1.2``, the model header (232 bytes), then chunks, each starting
    with a 4-character id: ``OBJT`` (object header, 176 bytes), ``CONT`` (contour header, 16 bytes, and
    ``psize`` points of 3 float32), ``MESH`` (mesh header and data, skipped), ``IEOF`` (end); every other
    chunk (IMAT, VIEW, MINX, SIZE, SLAN, MOST, OBST, COST, ...) carries its byte count in an int32 after
    the id and is skipped, except ``SIZE`` (per-point sizes of the previous contour), which is kept.
    Reference: IMOD's binary format description (bio3d.colorado.edu/imod/doc/binspec.html).

    Returns:
        :class:`ModPoints` with (n, 3) ``xyz`` plus object and contour ids.
    """
    path = Path(path)
    data = path.read_bytes()
    if len(data) < 8 + _MODEL_HEADER.size or data[:4] != b"IMOD":
        raise FormatError(path, "id", "not an IMOD binary model (no 'IMOD' id at the start)")
    version = data[4:8]
    if version != b"V1.2":
        problem(strict, path, "version", f"expected V1.2, got {version!r}")
    head = _MODEL_HEADER.unpack_from(data, 8)
    xmax, ymax, zmax, objsize, flags = head[1], head[2], head[3], head[4], head[5]
    pixsize, units_code = head[21], head[22]
    pos = 8 + _MODEL_HEADER.size

    xyz_parts: list[np.ndarray] = []
    obj_parts: list[np.ndarray] = []
    cont_parts: list[np.ndarray] = []
    size_parts: list[np.ndarray] = []
    names: list[str] = []
    contours: list[int] = []

    def need(nbytes: int, what: str) -> bool:
        if pos + nbytes > len(data):
            problem(strict, path, what, f"file ends at byte {len(data)}, {nbytes} bytes needed at {pos}")
            return False
        return True

    ended = False
    while pos + 4 <= len(data):
        cid = data[pos:pos + 4]
        pos += 4
        if cid == b"IEOF":
            ended = True
            break
        if cid == b"OBJT":
            if not need(_OBJECT_HEADER.size, "OBJT"):
                break
            obj = _OBJECT_HEADER.unpack_from(data, pos)
            pos += _OBJECT_HEADER.size
            names.append(obj[0].split(b"\0", 1)[0].decode("latin-1"))
            contours.append(0)
        elif cid == b"CONT":
            if not contours:
                raise FormatError(path, "CONT", f"contour before any object at byte {pos - 4}")
            if not need(_CONTOUR_HEADER.size, "CONT"):
                break
            psize = _CONTOUR_HEADER.unpack_from(data, pos)[0]
            pos += _CONTOUR_HEADER.size
            if psize < 0 or not need(12 * psize, "CONT points"):
                if psize < 0:
                    raise FormatError(path, "CONT", f"negative point count {psize}")
                break
            pts = np.frombuffer(data, dtype=">f4", count=3 * psize, offset=pos).reshape(psize, 3)
            pos += 12 * psize
            xyz_parts.append(pts.astype(np.float64))
            obj_parts.append(np.full(psize, len(contours) - 1, dtype=np.int64))
            cont_parts.append(np.full(psize, contours[-1], dtype=np.int64))
            size_parts.append(np.full(psize, np.nan))
            contours[-1] += 1
        elif cid == b"MESH":
            if not need(_MESH_HEADER.size, "MESH"):
                break
            vsize, lsize = _MESH_HEADER.unpack_from(data, pos)[:2]
            pos += _MESH_HEADER.size + 12 * vsize + 4 * lsize
        else:
            if not re.match(rb"^[A-Z0-9]{4}$", cid):
                raise FormatError(path, "chunk", f"unreadable chunk id {cid!r} at byte {pos - 4}")
            if not need(4, cid.decode()):
                break
            nbytes = struct.unpack_from(">i", data, pos)[0]
            pos += 4
            if nbytes < 0 or not need(nbytes, cid.decode()):
                if nbytes < 0:
                    raise FormatError(path, cid.decode(), f"negative chunk size {nbytes}")
                break
            if cid == b"SIZE" and size_parts and nbytes == 4 * len(size_parts[-1]):
                size_parts[-1] = np.frombuffer(data, dtype=">f4", count=nbytes // 4, offset=pos).astype(float)
            pos += nbytes
    if not ended:
        problem(strict, path, "IEOF", "no end-of-file chunk (file truncated?)")
    if len(contours) != objsize:
        problem(strict, path, "objsize", f"header says {objsize} objects, file holds {len(contours)}")

    def cat(parts: list[np.ndarray], dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(shape, dtype=dtype)

    return ModPoints(
        xyz=cat(xyz_parts, np.float64, (0, 3)).reshape(-1, 3),
        object_id=cat(obj_parts, np.int64, (0,)),
        contour_id=cat(cont_parts, np.int64, (0,)),
        image_shape_xyz=(int(xmax), int(ymax), int(zmax)),
        pixel_size=float(pixsize),
        units=_UNITS.get(int(units_code), f"code {units_code}"),
        object_names=names,
        contours_per_object=contours,
        point_sizes=cat(size_parts, np.float64, (0,)),
        flags=int(flags),
    )


_UNIT_CODES = {v: k for k, v in _UNITS.items()}
#: object flags (IMOD imodel.h): open contours (bit 3) and scattered points (bit 9)
_OBJ_OPEN = 1 << 3
_OBJ_SCAT = 1 << 9


def model_points_from_voxels(xyz_vox: Any) -> np.ndarray:
    """IMOD model coordinates (n, 3) of points at 0-based voxel indices ``xyz_vox`` (n, 3) as (x, y, z) = numpy
    ``[k, j, i]`` → ``(i, j, k)``: IMOD counts x and y from the pixel edges and z by section, so voxel
    ``(i, j, k)`` is the model point ``(i + 0.5, j + 0.5, k)`` (the inverse of :func:`read_mod_points`' reading
    used by the pick step's import)."""
    return np.asarray(xyz_vox, np.float64).reshape(-1, 3) + np.array([0.5, 0.5, 0.0])


def write_mod_points(
    path: PathType,
    objects: list[tuple[str, Any]],
    *,
    image_shape_xyz: tuple[int, int, int],
    pixel_size: float = 1.0,
    units: str = "pixel",
    sphere_radius_px: int = 5,
    model_name: str = "tomoguide",
) -> Path:
    """Write an IMOD binary model (``IMODV1.2``, big-endian) of scattered points; the inverse of
    :func:`read_mod_points` for the points, object names, image size, pixel size and units.

    ``objects``: ``[(name, points), ...]``, each ``points`` an (n, 3) array of IMOD model coordinates
    ``(x, y, z)`` in pixels of the image the model belongs to (IMOD's: x and y from the image's left and
    bottom *edges*, so the centre of 0-based voxel ``(i, j, k)`` is ``(i + 0.5, j + 0.5, k)``; z is the section
    number). Every object is a scattered-point object (drawn as spheres of ``sphere_radius_px``) holding its
    points in one contour (an empty object holds none). ``image_shape_xyz``: (nx, ny, nz) of that image;
    ``pixel_size`` in ``units`` ("pixel", "nm", "angstrom", ...). Written to a temporary file and renamed.
    Layout: IMOD's binary format description (bio3d.colorado.edu/imod/doc/binspec.html).
    """
    p = Path(path)
    if units not in _UNIT_CODES:
        raise ValueError(f"units must be one of {', '.join(_UNIT_CODES)}, got {units!r}")
    nx, ny, nz = (int(v) for v in image_shape_xyz)
    parts = [b"IMODV1.2", _MODEL_HEADER.pack(
        model_name.encode("latin-1")[:127], nx, ny, nz, len(objects),
        0,  # flags
        1, 1, 0, 255,  # drawmode, mousemode, blacklevel, whitelevel
        0.0, 0.0, 0.0, 1.0, 1.0, 1.0,  # offsets, scales
        0, 0, 0, 3, 128,  # current object, contour, point; res; thresh
        float(pixel_size), _UNIT_CODES[units], 0, 0.0, 0.0, 0.0)]
    colours = [(0.0, 1.0, 0.0), (1.0, 0.0, 1.0), (0.0, 1.0, 1.0), (1.0, 1.0, 0.0)]
    for k, (name, points) in enumerate(objects):
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        if not np.all(np.isfinite(pts)):
            raise ValueError(f"object {name!r}: non-finite point coordinates")
        n_cont = 1 if len(pts) else 0
        r, g, b = colours[k % len(colours)]
        parts.append(b"OBJT" + _OBJECT_HEADER.pack(
            name.encode("latin-1")[:63], *([0] * 16), n_cont, _OBJ_OPEN | _OBJ_SCAT,
            0, 1, r, g, b, int(sphere_radius_px),
            1, 3, 1, 1, 0, 0, 0, 0,  # symbol (circle), symsize, linewidth2, linewidth, linesty, symflags, pad, trans
            0, 0))  # meshsize, surfsize
        if n_cont:
            parts.append(b"CONT" + _CONTOUR_HEADER.pack(len(pts), 0, 0, 0) + pts.astype(">f4").tobytes())
    parts.append(b"IEOF")
    tmp = p.with_name(f".{p.name}.tmp")
    tmp.write_bytes(b"".join(parts))
    tmp.replace(p)
    return p


# --------------------------------------------------------------------------------------------------------
# describe
# --------------------------------------------------------------------------------------------------------


def _xf_summary(rows: np.ndarray) -> dict[str, Any]:
    a = rows[:, :4].reshape(-1, 2, 2)
    # rotation angle of each matrix (IMOD's convention: the rotation applied to the raw image);
    # the mean is taken on the circle.
    rot = np.arctan2(a[:, 1, 0] - a[:, 0, 1], a[:, 0, 0] + a[:, 1, 1])
    mean_rot = float(np.degrees(np.arctan2(np.sin(rot).mean(), np.cos(rot).mean())))
    det = np.linalg.det(a)
    return {
        "n_views": int(rows.shape[0]),
        "mean_rotation_deg": mean_rot,
        "tilt_axis_deg": -mean_rot,
        "mean_magnification": float(np.sqrt(np.abs(det)).mean()),
        "max_shift_px": float(np.hypot(rows[:, 4], rows[:, 5]).max()),
    }


def describe(path: PathType, *, strict: bool = True) -> dict[str, Any]:
    """Summarise an IMOD file by its extension (.tlt .rawtlt .xtilt .xf .mod .com .edf .defocus) for display.

    Keys always include ``"kind"``; angle files add ``n_views``, ``min_deg``, ``max_deg``, ``step_deg``
    (median spacing); ``.xf`` adds ``n_views``, ``mean_rotation_deg`` (rotation applied to the raw
    images), ``tilt_axis_deg`` (its negative: the tilt-axis angle from Y, counter-clockwise),
    ``mean_magnification``, ``max_shift_px``; ``.mod`` adds numbers of points, contours and objects;
    ``.com``/``.edf`` add the number of keys and a few important values.
    """
    p = Path(path)
    ext = p.suffix.lower()
    if ext in (".tlt", ".rawtlt", ".xtilt"):
        table = read_tilt_table(p, strict=strict) if ext != ".xtilt" else {"tilt_deg": read_xtilt(p, strict=strict)}
        ang = table["tilt_deg"]
        step = float(np.median(np.abs(np.diff(ang)))) if ang.size > 1 else 0.0
        facts: dict[str, Any] = {
            "kind": ext[1:], "n_views": int(ang.size), "min_deg": float(ang.min()),
            "max_deg": float(ang.max()), "step_deg": step,
        }
        if len(table) > 1:
            facts["flavour"] = f"{len(table)}-column angle file"
            facts["columns"] = list(table)
        return facts
    if ext == ".dose":
        dose = read_dose_list(p, strict=strict)
        two = bool(np.isfinite(dose[:, 0]).all())
        col = dose[:, 1]
        return {
            "kind": "dose_list", "flavour": "prior dose and dose per view (IMOD TypeOfDoseFile 3)" if two
            else "one dose per view (IMOD TypeOfDoseFile 1, or 2 when it is the prior dose)",
            "n_views": int(dose.shape[0]), "dose_range_e_per_A2": [float(col.min()), float(col.max())],
            **({"prior_dose_max_e_per_A2": float(dose[:, 0].max())} if two else {}),
        }
    if ext == ".defocus":
        d = read_ctfplotter_defocus(p, strict=strict)
        facts = {
            "kind": "ctfplotter_defocus", "version": d.version,
            "flavour": f"ctfplotter defocus v{d.version}", "flags": d.flags,
            "n_lines": int(d.ranges.shape[0]), "n_views": int(d.views.size),
            "views_range": [int(d.views.min()) + 1, int(d.views.max()) + 1],
            "defocus_range_A": [float(min(d.defocus_u_A.min(), d.defocus_v_A.min())),
                                float(max(d.defocus_u_A.max(), d.defocus_v_A.max()))],
            "astigmatism": d.has_astigmatism,
            "phase_shift": d.phase_shift_deg is not None,
        }
        if d.has_astigmatism:
            facts["astigmatism_max_A"] = float(np.abs(d.defocus_u_A - d.defocus_v_A).max())
        if d.tilts_inverted:
            facts["tilts_inverted"] = True
        return facts
    if ext == ".xf":
        return {"kind": "xf", **_xf_summary(read_xf(p, strict=strict))}
    if ext == ".mod":
        m = read_mod_points(p, strict=strict)
        return {
            "kind": "mod", "n_points": int(m.xyz.shape[0]), "n_contours": m.n_contours,
            "n_objects": m.n_objects, "image_shape_xyz": m.image_shape_xyz,
            "pixel_size": m.pixel_size, "units": m.units,
        }
    if ext == ".com":
        d = read_com(p, strict=strict)
        excluded = read_exclude_list(p, strict=strict)
        keep = ("THICKNESS", "XAXISTILT", "EXCLUDELIST", "IMAGEBINNED", "BinByFactor", "TransformFile",
                "TILTFILE", "FULLIMAGE")
        facts = {"kind": "com", "program": d.get("$program"), "n_keys": len(d),
                 **{k: d[k] for k in keep if k in d}}
        if excluded:
            facts["excluded_views_1based"] = [v + 1 for v in excluded]
        return facts
    if ext == ".edf":
        d = read_edf(p, strict=strict)
        keep = ("Setup.DatasetName", "Setup.PixelSize", "Setup.Binning", "Setup.ImageRotationA",
                "Setup.AxisA.ExcludeProjections")
        return {"kind": "edf", "n_keys": len(d), **{k: d[k] for k in keep if k in d}}
    raise FormatError(p, None, f"unknown IMOD file type {ext!r} (expected .tlt .rawtlt .xtilt .xf .mod .com .edf "
                      ".defocus)")
