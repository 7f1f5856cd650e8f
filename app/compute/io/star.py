"""RELION STAR files (RELION 4 and 5 tomography), read and written with ``starfile`` as pandas tables.

Every STAR file is a sequence of named data blocks (``data_NAME``); a block is either a loop (a table:
one :class:`pandas.DataFrame`) or a list of ``label value`` pairs (a ``dict``). :func:`read_star` always
returns ``{name: block}`` with the ``data_`` prefix removed (``data_`` alone gives the name ``""``).

Kinds of file handled here (RELION labels; units as RELION uses them):

* **tomograms** (``tomograms.star``, RELION 5): block ``global``, one row per tomogram. Required:
  ``rlnTomoName``, ``rlnVoltage`` (kV), ``rlnSphericalAberration`` (mm), ``rlnAmplitudeContrast``
  (fraction) and a pixel size (``rlnTomoTiltSeriesPixelSize`` or ``rlnMicrographOriginalPixelSize``, Å).
  RELION 5 also writes ``rlnTomoTiltSeriesStarFile``, ``rlnTomoHand`` (±1, defocus handedness),
  ``rlnMicrographOriginalPixelSize``, ``rlnTomoTiltSeriesPixelSize``, optionally ``rlnTomoSizeX/Y/Z``
  (unbinned tilt-series px), ``rlnTomoTomogramBinning``, ``rlnTomoReconstructedTomogram``. RELION 4
  variants are accepted too: the import ``tilt_series.star`` (optics block + ``global`` with
  ``rlnOpticsGroup``: optics values are merged into each row) and a WarpTools/RELION 4
  ``tomograms.star`` with one per-tilt block per tomogram (``rlnTomoProjX..W`` projection matrices).
* **tilt series** (RELION 5 per-tilt-series STAR, block named after the tomogram; RELION 4 import:
  block ``tilt_images``): one row per tilt image. Required: an image name (``rlnMicrographMovieName``,
  ``rlnMicrographName`` or ``rlnTomoTiltMovieFile``) and ``rlnTomoNominalStageTiltAngle`` (degrees).
  Usual further labels: ``rlnTomoNominalTiltAxisAngle`` (degrees, from the image Y axis as SerialEM),
  ``rlnMicrographPreExposure`` (e⁻/Å² before this tilt), ``rlnTomoNominalDefocus`` (µm, SerialEM target,
  negative = underfocus as SerialEM writes it), ``rlnDefocusU/V`` (Å, positive = underfocus),
  ``rlnDefocusAngle`` (degrees), ``rlnCtfMaxResolution`` (Å), ``rlnCtfFigureOfMerit``,
  ``rlnTomoXTilt/YTilt/ZRot`` (degrees), ``rlnTomoXShiftAngst/YShiftAngst`` (Å).
* **CTF** (per-tilt CTF results, as RELION's CtfFind job writes: optics + ``micrographs``): required
  ``rlnMicrographName``, ``rlnDefocusU``, ``rlnDefocusV`` (Å, positive = underfocus),
  ``rlnDefocusAngle`` (degrees); usually ``rlnCtfMaxResolution`` (Å) and ``rlnCtfFigureOfMerit``.
* **particles** (RELION 5: optics + ``particles``; optional ``general``): required ``rlnTomoName`` and
  coordinates, either ``rlnCenteredCoordinateX/Y/ZAngst`` (RELION 5: Å from the tomogram centre,
  centre = size/2 in tilt-series px, see :mod:`tomoguide.compute.io.coords`) or ``rlnCoordinateX/Y/Z``
  (RELION 4: px). Optional ``rlnAngleRot/Tilt/Psi``, ``rlnTomoSubtomogramRot/Tilt/Psi`` (degrees),
  ``rlnOriginX/Y/ZAngst`` (Å).
* **micrographs** (a motion-correction output: optics + ``micrographs`` without defocus) — read and
  described, no special reader.

Readers are strict by default: a missing required column raises
:class:`~tomoguide.compute.io.errors.FormatError` whose field is ``data_BLOCK/COLUMN``; with
``strict=False`` a :class:`~tomoguide.compute.io.errors.FormatWarning` is issued and the column is
filled with NaN. Writers validate the same columns (always strictly) and write atomically (temporary
file in the same folder, then ``os.replace``).
"""

from __future__ import annotations

import linecache
import math
import os
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import starfile

from .errors import FormatError, FormatWarning, problem

Block = pd.DataFrame | dict[str, Any]

# ---- label sets ---------------------------------------------------------------------------------------

TOMOGRAMS_REQUIRED = ("rlnTomoName", "rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast")
#: one of these pixel sizes (Å) must be present in a tomograms table
TOMOGRAMS_PIXEL_SIZE = ("rlnTomoTiltSeriesPixelSize", "rlnMicrographOriginalPixelSize")
#: the full set RELION 5 writes and :func:`write_tomograms_star` requires
TOMOGRAMS_RELION5 = (
    "rlnTomoName",
    "rlnTomoTiltSeriesStarFile",
    "rlnVoltage",
    "rlnSphericalAberration",
    "rlnAmplitudeContrast",
    "rlnMicrographOriginalPixelSize",
    "rlnTomoHand",
    "rlnTomoTiltSeriesPixelSize",
)
TILT_IMAGE_NAMES = ("rlnMicrographMovieName", "rlnMicrographName", "rlnTomoTiltMovieFile")
TILT_SERIES_REQUIRED = ("rlnTomoNominalStageTiltAngle",)
CTF_REQUIRED = ("rlnMicrographName", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle")
CTF_WRITE_REQUIRED = CTF_REQUIRED + (
    "rlnCtfMaxResolution",
    "rlnCtfFigureOfMerit",
    "rlnTomoNominalStageTiltAngle",
)
CENTERED_XYZ = ("rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst", "rlnCenteredCoordinateZAngst")
PIXEL_XYZ = ("rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ")
ANGLES = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
SUBTOMO_ANGLES = ("rlnTomoSubtomogramRot", "rlnTomoSubtomogramTilt", "rlnTomoSubtomogramPsi")
ORIGINS_A = ("rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst")

_NON_TABLE_BLOCKS = ("optics", "general", "global")

# ---- generic read/write -------------------------------------------------------------------------------

_TOKEN_RE = re.compile(r"""'[^']*'(?=\s|$)|"[^"]*"(?=\s|$)|\S+""")
#: labels whose values are names or paths (never checked to be numbers)
_TEXT_LABEL_RE = re.compile(r"(Name|File|Image|Movie|Path|Star|Tomogram|Frames|Proj[XYZW]|Dir|List|Mode)$")


def _is_number(tok: str) -> bool:
    try:
        float(tok)
    except ValueError:
        return False
    return True


@dataclass
class _Loop:
    block: str
    labels: list[str] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)  # 1-based line number of each row
    numeric: list[int] = field(default_factory=list)  # per column: values that read as numbers
    first_text: list[tuple[int, int, str] | None] = field(default_factory=list)  # (row, line, token)


def _decode_star(p: Path, raw: bytes) -> str:
    """The text of a STAR file (UTF-8, a BOM allowed); UTF-16, NUL bytes and invalid UTF-8 are refused with the
    line: RELION and ``starfile`` read ASCII/UTF-8 only."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise FormatError(p, "encoding", "UTF-16 text: STAR files are ASCII/UTF-8 (save it as UTF-8)")
    if b"\x00" in raw:
        line = raw.count(b"\n", 0, raw.index(b"\x00")) + 1
        raise FormatError(p, f"line {line}", "NUL bytes: not a text file (damaged?)")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise FormatError(p, f"line {line}", "not UTF-8 text (the file is damaged)") from None


def scan_star(path: str | PathLike[str], text: str, *, strict: bool = True) -> dict[str, list[int]]:
    """Check the structure of a STAR text line by line, as ``starfile`` cannot: every row of a loop has one
    value per label, every ``_label`` of a pair block has a value, the file does not end in the middle of a row,
    and a column whose values are numbers holds no text. Problems name the block, the row and the line:
    ``FILE: data_particles row 12 (line 57): 5 values for 6 columns (the file ends here: cut short?)``.
    Returns ``{block: [line of each row of its (last) loop]}`` (1-based), for later messages."""
    p = Path(path)
    lines = text.splitlines()
    last = len(lines)
    while last > 0 and (not lines[last - 1].strip() or lines[last - 1].lstrip().startswith("#")):
        last -= 1
    ends_cut = bool(text) and not text.endswith(("\n", "\r"))
    block: str | None = None
    loop: _Loop | None = None
    in_labels = False
    loops: list[_Loop] = []
    for i, line in enumerate(lines, start=1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if s.startswith(";"):
            return {}  # a multi-line text field: not used by RELION's tomography files; left to the parser
        if s.startswith("data_"):
            block, loop, in_labels = s[5:].split()[0] if len(s) > 5 else "", None, False
            continue
        if block is None:
            problem(strict, p, f"line {i}", f"{s[:40]!r} before the first data_ block")
            continue
        where_block = f"data_{block}"
        if s.startswith("loop_"):
            loop, in_labels = _Loop(block), True
            loops.append(loop)
            continue
        toks = _TOKEN_RE.findall(s)
        if toks and toks[0].startswith("_") and (in_labels or loop is None or len(toks) >= 2):
            if in_labels and loop is not None and (len(toks) == 1 or toks[1].startswith("#")):
                loop.labels.append(toks[0][1:])
                continue
            loop, in_labels = None, False  # a label-value pair (ends a loop)
            if len(toks) < 2 or toks[1].startswith("#"):
                cut = " (the file ends here: cut short?)" if i == last else ""
                problem(strict, p, f"{where_block} {toks[0]} (line {i})", f"a label without a value{cut}")
            elif i == last and ends_cut:
                problem(strict, p, f"{where_block} {toks[0]} (line {i})", "the file ends in the middle of this "
                                                                          "line (no line end): cut short?")
            continue
        if loop is None:
            problem(strict, p, f"{where_block} line {i}", f"cannot read {s[:40]!r} (not a label, a loop_ or a row)")
            continue
        if in_labels:
            in_labels = False
            if not loop.labels:
                problem(strict, p, f"{where_block} line {i}", "a loop_ without labels")
                continue
            loop.numeric = [0] * len(loop.labels)
            loop.first_text = [None] * len(loop.labels)
        loop.rows.append(i)
        row = len(loop.rows)
        field_ = f"{where_block} row {row} (line {i})"
        if len(toks) != len(loop.labels):
            cut = " (the file ends here: cut short?)" if i == last else ""
            problem(strict, p, field_, f"{len(toks)} values for {len(loop.labels)} columns{cut}")
        elif i == last and ends_cut:
            problem(strict, p, field_, "the file ends in the middle of this row (no line end): cut short?")
        for j, tok in enumerate(toks[: len(loop.labels)]):
            if _is_number(tok):
                loop.numeric[j] += 1
            elif loop.first_text[j] is None:
                loop.first_text[j] = (row, i, tok)
    if ends_cut and last and (lines[last - 1].strip().startswith(("data_", "loop_", "_")) and
                              not (len(_TOKEN_RE.findall(lines[last - 1])) >= 2 and not in_labels)):
        where = f"data_{block} line {last}" if block is not None else f"line {last}"
        problem(strict, p, where, "the file ends in the middle of this line (no line end): cut short?")
    for lp in loops:
        for j, label in enumerate(lp.labels):
            first = lp.first_text[j] if j < len(lp.first_text) else None
            if first is None or _TEXT_LABEL_RE.search(label) or lp.numeric[j] == 0:
                continue
            n_text = len(lp.rows) - lp.numeric[j]
            if lp.numeric[j] >= n_text:
                row, i, tok = first
                problem(strict, p, f"data_{lp.block} row {row} (line {i}) {label}",
                        f"not a number: {tok[:30]!r} (the column's other values are numbers)")
    return {lp.block: lp.rows for lp in loops}


def read_star(path: str | PathLike[str], *, strict: bool = True) -> dict[str, Block]:
    """Read every data block of a STAR file: ``{block name without "data_": DataFrame | dict}``.

    Loops become DataFrames (numeric columns parsed as numbers, others as strings; ``df.attrs["lines"]`` the
    1-based line of each row); label-value blocks become dicts. The text is checked first (:func:`scan_star`:
    a row with too few or too many values, a file cut short, text in a column of numbers, a label without a
    value), each problem naming the block, row and line. A file without any data block is an error (strict) or
    gives ``{}`` with a warning. Raises ``FileNotFoundError`` for a missing file and :class:`FormatError` for an
    unparsable one.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    text = _decode_star(p, p.read_bytes())
    row_lines = scan_star(p, text, strict=strict)
    if not text.strip():
        problem(strict, p, "blocks", "empty file: no data_ block")
        return {}
    # starfile reads lines through ``linecache`` and forgets them only after a successful parse: a file that failed
    # once would be read from that stale cache ever after, even once replaced (the wizard is a long-running
    # process). Its entry is dropped before and after every read.
    key = str(p)
    linecache.cache.pop(key, None)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # starfile/pandas chatter is not a format problem
            blocks = starfile.read(p, always_dict=True)
    except Exception as exc:  # noqa: BLE001 - starfile raises assorted errors for broken files
        detail = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else "unreadable"
        raise FormatError(p, "syntax", f"not a readable STAR file ({detail})") from exc
    finally:
        linecache.cache.pop(key, None)
    if not blocks:
        problem(strict, p, "blocks", "no data_ block found")
        return {}
    out: dict[str, Block] = {}
    for k, v in blocks.items():
        if isinstance(v, pd.DataFrame) and str(k) in row_lines and len(row_lines[str(k)]) == len(v):
            v.attrs["lines"] = row_lines[str(k)]
        out[str(k)] = v
    return out


def _row_field(df: pd.DataFrame, block: str, i: int, col: str | None = None) -> str:
    """``data_BLOCK row N (line L) COLUMN`` for row ``i`` (0-based) of a table read by :func:`read_star`."""
    lines = df.attrs.get("lines")
    where = f"data_{block} row {i + 1}" + (f" (line {lines[i]})" if lines and i < len(lines) else "")
    return where + (f" {col}" if col else "")


def _check_values(df: pd.DataFrame, block: str, path: Path, strict: bool, columns: tuple[str, ...], *,
                  lo: float = -math.inf, hi: float = math.inf, what: str = "") -> pd.DataFrame:
    """Columns that must hold finite numbers within [lo, hi]: the first bad value of each is a problem naming
    block, row, line and column (permissive: set to NaN)."""
    for col in columns:
        if col not in df.columns:
            continue
        v = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)
        bad = ~np.isfinite(v) | (v < lo) | (v > hi)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            rng = f" from {lo:g} to {hi:g}{what}" if math.isfinite(lo) or math.isfinite(hi) else ""
            value = df[col].iloc[i]
            shown = f"{float(value):g}" if isinstance(value, (int, float, np.number)) else repr(value)
            problem(strict, path, _row_field(df, block, i, col),
                    f"{shown}: must be a finite number{rng} ({int(bad.sum())} such row{'s' if bad.sum() > 1 else ''})")
            df = df.copy()
            df[col] = np.where(bad, np.nan, v)
    return df


def write_star(
    path: str | PathLike[str],
    blocks: dict[str, Block],
    *,
    overwrite: bool = True,
    float_format: str = "%.6f",
) -> Path:
    """Write ``blocks`` (``{name: DataFrame | dict}``) as ``data_NAME`` blocks, atomically.

    The file is written to a temporary file in the same folder and renamed over ``path``
    (``os.replace``), so a reader never sees half a file. ``overwrite=False`` refuses an existing file
    (``FileExistsError``). Returns the path.
    """
    p = Path(path)
    if p.exists() and not overwrite:
        raise FileExistsError(f"{p}: exists and overwrite=False")
    if not blocks:
        raise ValueError("write_star: nothing to write (no blocks)")
    p.parent.mkdir(parents=True, exist_ok=True)
    data: dict[str, Block] = {}
    for name, block in blocks.items():
        if isinstance(block, pd.DataFrame):
            data[str(name)] = block.reset_index(drop=True)
        elif isinstance(block, dict):
            data[str(name)] = dict(block)
        else:
            raise TypeError(f"block {name!r}: expected a DataFrame or a dict, got {type(block).__name__}")
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    os.close(fd)
    try:
        starfile.write(data, tmp, float_format=float_format, overwrite=True)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return p


# ---- helpers ------------------------------------------------------------------------------------------


def _table(blocks: dict[str, Block], name: str) -> pd.DataFrame | None:
    """Block ``name`` as a DataFrame (a label-value block becomes one row), or None if absent."""
    block = blocks.get(name)
    if block is None:
        return None
    if isinstance(block, dict):
        return pd.DataFrame([block])
    return block


def _require(
    df: pd.DataFrame, columns: tuple[str, ...], path: Path, block: str, strict: bool
) -> pd.DataFrame:
    """Check ``columns``; missing ones raise (strict) or are warned about and filled with NaN."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        df = df.copy()
    for col in missing:
        problem(strict, path, f"data_{block}/{col}", "missing required column")
        df[col] = np.nan
    return df


def _require_one_of(
    df: pd.DataFrame, columns: tuple[str, ...], path: Path, block: str, strict: bool
) -> None:
    if not any(c in df.columns for c in columns):
        problem(strict, path, f"data_{block}/{columns[0]}", "missing column: need one of " + ", ".join(columns))


def _merge_optics(df: pd.DataFrame, optics: pd.DataFrame | None) -> pd.DataFrame:
    """Copy optics-group values into each row (by ``rlnOpticsGroup``), not replacing existing columns."""
    if optics is None or optics.empty:
        return df
    extra = [c for c in optics.columns if c not in df.columns]
    if not extra:
        return df
    if "rlnOpticsGroup" in df.columns and "rlnOpticsGroup" in optics.columns:
        lookup = optics.set_index("rlnOpticsGroup")
        out = df.copy()
        for c in extra:
            out[c] = df["rlnOpticsGroup"].map(lookup[c]).to_numpy()
        return out
    if len(optics) == 1:
        out = df.copy()
        for c in extra:
            out[c] = optics[c].iloc[0]
        return out
    return df


def _per_tilt_block(blocks: dict[str, Block], path: Path, strict: bool) -> tuple[str, pd.DataFrame]:
    """The per-row table of a file: the largest loop that is not optics/general/global."""
    candidates = [
        (k, v) for k, v in blocks.items() if isinstance(v, pd.DataFrame) and k not in _NON_TABLE_BLOCKS
    ]
    if not candidates:
        found = ", ".join(f"data_{k}" for k in blocks) or "none"
        raise FormatError(path, "blocks", f"no per-row table (a loop other than optics/general/global; blocks: "
                                          f"{found})")
    if len(candidates) > 1:
        problem(
            strict,
            path,
            None,
            f"{len(candidates)} per-tilt tables ({', '.join(k for k, _ in candidates)}); using the largest",
        )
    return max(candidates, key=lambda kv: len(kv[1]))


# ---- tomograms ----------------------------------------------------------------------------------------


@dataclass
class TomogramsStar:
    """Contents of a ``tomograms.star``.

    ``tomograms``: the ``global`` table, one row per tomogram, optics values merged into each row.
    ``tilt_blocks``: per-tilt tables stored in the same file (RELION 4 / WarpTools style, keyed by block
    name = ``rlnTomoName``); empty for RELION 5, whose per-tilt tables are separate files named in
    ``rlnTomoTiltSeriesStarFile`` (relative to the project folder).
    ``missing_relion5``: labels of :data:`TOMOGRAMS_RELION5` absent from the table (informational).
    """

    path: Path
    tomograms: pd.DataFrame
    tilt_blocks: dict[str, pd.DataFrame] = field(default_factory=dict)
    missing_relion5: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [str(n) for n in self.tomograms["rlnTomoName"]]

    def pixel_size_A(self, name: str) -> float:
        """Tilt-series pixel size (Å) of tomogram ``name`` (falls back to the original pixel size)."""
        row = self.tomograms[self.tomograms["rlnTomoName"].astype(str) == name]
        if row.empty:
            raise KeyError(name)
        for col in TOMOGRAMS_PIXEL_SIZE:
            if col in row.columns and pd.notna(row[col].iloc[0]):
                return float(row[col].iloc[0])
        raise KeyError(f"{name}: no pixel size")


def read_tomograms_star(path: str | PathLike[str], *, strict: bool = True) -> TomogramsStar:
    """Read a RELION 5 ``tomograms.star`` (or a RELION 4 import/WarpTools variant, see module doc)."""
    p = Path(path)
    blocks = read_star(p, strict=strict)
    glob = _table(blocks, "global")
    if glob is None:
        problem(strict, p, "data_global", "missing block")
        glob = pd.DataFrame({c: pd.Series(dtype=float) for c in TOMOGRAMS_REQUIRED})
    optics = _table(blocks, "optics")
    glob = _merge_optics(glob, optics)
    glob = _require(glob, TOMOGRAMS_REQUIRED, p, "global", strict)
    _require_one_of(glob, TOMOGRAMS_PIXEL_SIZE, p, "global", strict)
    glob = glob.copy()
    glob["rlnTomoName"] = glob["rlnTomoName"].astype(str)
    glob = _check_values(glob, "global", p, strict, TOMOGRAMS_PIXEL_SIZE, lo=0.01, hi=1e5, what=" A")
    glob = _check_values(glob, "global", p, strict, ("rlnVoltage",), lo=1.0, hi=3000.0, what=" kV")
    glob = _check_values(glob, "global", p, strict, ("rlnAmplitudeContrast",), lo=0.0, hi=1.0)
    names = set(glob["rlnTomoName"])
    tilt_blocks = {
        k: v for k, v in blocks.items() if isinstance(v, pd.DataFrame) and k in names
    }
    missing = [c for c in TOMOGRAMS_RELION5 if c not in glob.columns]
    return TomogramsStar(path=p, tomograms=glob, tilt_blocks=tilt_blocks, missing_relion5=missing)


def write_tomograms_star(
    path: str | PathLike[str],
    tomograms: pd.DataFrame,
    tilt_blocks: dict[str, pd.DataFrame] | None = None,
    *,
    overwrite: bool = True,
) -> Path:
    """Write a RELION 5 ``tomograms.star``: block ``global`` (+ optional per-tomogram blocks).

    ``tomograms`` must hold every label of :data:`TOMOGRAMS_RELION5`; extra columns are written as well.
    """
    _require(tomograms, TOMOGRAMS_RELION5, Path(path), "global", True)
    blocks: dict[str, Block] = {"global": tomograms}
    for name, df in (tilt_blocks or {}).items():
        blocks[str(name)] = df
    return write_star(path, blocks, overwrite=overwrite)


# ---- tilt series --------------------------------------------------------------------------------------


def read_tilt_series_star(path: str | PathLike[str], *, strict: bool = True) -> pd.DataFrame:
    """Read a per-tilt-series STAR: one row per tilt image (RELION 5 per-TS STAR, RELION 4 import).

    Returns the per-tilt table (optics values merged into each row where an optics block exists), in
    file order. The block name (RELION 5: the tomogram name) is in ``df.attrs["block"]``.
    Required: an image name (one of :data:`TILT_IMAGE_NAMES`) and ``rlnTomoNominalStageTiltAngle``.
    """
    p = Path(path)
    blocks = read_star(p, strict=strict)
    name, df = _per_tilt_block(blocks, p, strict)
    _require_one_of(df, TILT_IMAGE_NAMES, p, name, strict)
    df = _require(df, TILT_SERIES_REQUIRED, p, name, strict)
    df = _check_values(df, name, p, strict, TILT_SERIES_REQUIRED, lo=-90.0, hi=90.0, what="°")
    df = _check_values(df, name, p, strict, ("rlnMicrographPreExposure",), lo=0.0, hi=1e5, what=" e/A^2")
    df = _merge_optics(df, _table(blocks, "optics"))
    df = df.reset_index(drop=True)
    df.attrs["block"] = name
    return df


def write_tilt_series_star(
    path: str | PathLike[str], tilts: pd.DataFrame, *, tomo_name: str, overwrite: bool = True
) -> Path:
    """Write a RELION 5 per-tilt-series STAR (one block named ``tomo_name``, one row per tilt).

    ``tilts`` needs an image name column (:data:`TILT_IMAGE_NAMES`) and ``rlnTomoNominalStageTiltAngle``.
    """
    p = Path(path)
    if not any(c in tilts.columns for c in TILT_IMAGE_NAMES):
        raise FormatError(p, f"data_{tomo_name}/{TILT_IMAGE_NAMES[0]}", "missing column: need one of " + ", ".join(TILT_IMAGE_NAMES))
    _require(tilts, TILT_SERIES_REQUIRED, p, tomo_name, True)
    return write_star(p, {tomo_name: tilts}, overwrite=overwrite)


# ---- CTF ----------------------------------------------------------------------------------------------


def read_ctf_star(path: str | PathLike[str], *, strict: bool = True) -> pd.DataFrame:
    """Read per-tilt CTF results (RELION CtfFind output or :func:`write_ctf_star`): one row per image.

    Defocus ``rlnDefocusU/V`` in Å (positive = underfocus), ``rlnDefocusAngle`` in degrees. Optics
    values are merged into each row.
    """
    p = Path(path)
    blocks = read_star(p, strict=strict)
    name, df = _per_tilt_block(blocks, p, strict)
    df = _require(df, CTF_REQUIRED, p, name, strict)
    df = _merge_optics(df, _table(blocks, "optics")).reset_index(drop=True)
    df.attrs["block"] = name
    return df


def write_ctf_star(
    path: str | PathLike[str],
    rows: pd.DataFrame,
    *,
    optics: dict[str, Any] | None = None,
    overwrite: bool = True,
) -> Path:
    """Write per-tilt CTF results: optional ``optics`` block + ``micrographs`` table.

    ``rows`` must have :data:`CTF_WRITE_REQUIRED`: ``rlnMicrographName``, ``rlnDefocusU``,
    ``rlnDefocusV`` (Å, positive = underfocus), ``rlnDefocusAngle`` (degrees), ``rlnCtfMaxResolution``
    (Å), ``rlnCtfFigureOfMerit`` and ``rlnTomoNominalStageTiltAngle`` (degrees).
    """
    p = Path(path)
    _require(rows, CTF_WRITE_REQUIRED, p, "micrographs", True)
    blocks: dict[str, Block] = {}
    if optics:
        blocks["optics"] = _optics_frame(optics)
    blocks["micrographs"] = rows
    return write_star(p, blocks, overwrite=overwrite)


# ---- particles ----------------------------------------------------------------------------------------


@dataclass
class ParticlesStar:
    """Contents of a RELION tomography particles STAR.

    ``particles``: one row per particle (optics values *not* merged; join on ``rlnOpticsGroup``).
    ``optics``: the optics table or None. ``general``: the ``general`` block or None.
    ``relion_version``: 5 when centred Å coordinates are present, else 4 (pixel coordinates).
    """

    path: Path
    particles: pd.DataFrame
    optics: pd.DataFrame | None
    general: dict[str, Any] | None
    relion_version: int

    def pixel_size_A(self) -> float | None:
        """Tilt-series pixel size from the optics table (first group), if any."""
        if self.optics is None:
            return None
        for col in ("rlnTomoTiltSeriesPixelSize", "rlnMicrographOriginalPixelSize", "rlnImagePixelSize"):
            if col in self.optics.columns and len(self.optics):
                v = pd.to_numeric(self.optics[col].iloc[:1], errors="coerce").to_numpy(dtype=float)[0]
                return float(v) if np.isfinite(v) and v > 0 else None
        return None


def read_particles_star(path: str | PathLike[str], *, strict: bool = True) -> ParticlesStar:
    """Read a RELION 5 (or 4) tomography particles STAR (see module doc for the labels)."""
    p = Path(path)
    blocks = read_star(p, strict=strict)
    if "particles" in blocks:
        name, df = "particles", _table(blocks, "particles")
    else:
        name, df = _per_tilt_block(blocks, p, strict)
    assert df is not None
    df = _check_values(df, name, p, strict, CENTERED_XYZ + PIXEL_XYZ + ANGLES + SUBTOMO_ANGLES + ORIGINS_A)
    has_centered = all(c in df.columns for c in CENTERED_XYZ)
    has_pixels = all(c in df.columns for c in PIXEL_XYZ)
    if not (has_centered or has_pixels):
        problem(
            strict,
            p,
            f"data_{name}/{CENTERED_XYZ[0]}",
            "missing coordinates: need rlnCenteredCoordinateX/Y/ZAngst (RELION 5) or rlnCoordinateX/Y/Z",
        )
        df = df.copy()
        for col in CENTERED_XYZ:
            df[col] = np.nan
        has_centered = True
    if "rlnTomoName" not in df.columns and "rlnMicrographName" in df.columns:
        df = df.copy()
        df["rlnTomoName"] = [Path(str(m)).stem for m in df["rlnMicrographName"]]
    df = _require(df, ("rlnTomoName",), p, name, strict)
    df = df.reset_index(drop=True)
    df["rlnTomoName"] = df["rlnTomoName"].astype(str)
    general = blocks.get("general")
    if isinstance(general, pd.DataFrame):
        general = general.iloc[0].to_dict() if len(general) else None
    optics = _table(blocks, "optics")
    if optics is not None:
        optics = _check_values(optics, "optics", p, strict, ("rlnTomoTiltSeriesPixelSize",
                                                             "rlnMicrographOriginalPixelSize", "rlnImagePixelSize"),
                               lo=0.01, hi=1e5, what=" A")
    return ParticlesStar(
        path=p,
        particles=df,
        optics=optics,
        general=general,
        relion_version=_particles_relion_version(df, general),
    )


def _particles_relion_version(df: pd.DataFrame, general: Any) -> int:
    """5 for a RELION 5 (or WarpTools) particles table, else 4.

    RELION 5 writes a ``data_general`` block with ``rlnTomoSubTomosAre2DStacks`` (WarpTools 2 does too,
    with pixel coordinates ``rlnCoordinateX/Y/Z``), centred Å coordinates ``rlnCenteredCoordinateX/Y/ZAngst``
    beside ``rlnTomoName``; RELION 4 has neither (its optics ``rlnTomoSubtomogramBinning`` proves nothing).
    """
    if isinstance(general, pd.DataFrame):
        general = general.iloc[0].to_dict() if len(general) else None
    if isinstance(general, dict) and "rlnTomoSubTomosAre2DStacks" in general:
        return 5
    if "rlnTomoName" in df.columns and all(c in df.columns for c in CENTERED_XYZ):
        return 5
    return 4


def _optics_frame(optics: dict[str, Any] | pd.DataFrame) -> pd.DataFrame:
    if isinstance(optics, pd.DataFrame):
        return optics
    values = {k: (list(v) if isinstance(v, (list, tuple, np.ndarray)) else [v]) for k, v in optics.items()}
    return pd.DataFrame(values)


def write_particles_star(
    path: str | PathLike[str],
    particles: pd.DataFrame,
    optics: dict[str, Any] | pd.DataFrame,
    *,
    general: dict[str, Any] | None = None,
    overwrite: bool = True,
) -> Path:
    """Write a RELION 5 particles STAR: ``[general]``, ``optics``, ``particles``.

    ``particles`` needs ``rlnTomoName`` and ``rlnCenteredCoordinateX/Y/ZAngst`` (Å from the tomogram
    centre) or ``rlnCoordinateX/Y/Z``; ``optics`` is one optics group as ``{label: value}`` (or lists of
    values for several groups, or a DataFrame) and must give ``rlnTomoTiltSeriesPixelSize`` (Å) as
    RELION 5 needs it. ``rlnOpticsGroup`` (1) is added to the particles and the optics when absent.
    """
    p = Path(path)
    _require(particles, ("rlnTomoName",), p, "particles", True)
    if not (all(c in particles.columns for c in CENTERED_XYZ) or all(c in particles.columns for c in PIXEL_XYZ)):
        raise FormatError(p, f"data_particles/{CENTERED_XYZ[0]}", "missing coordinates")
    opt = _optics_frame(optics).copy()
    _require(opt, ("rlnTomoTiltSeriesPixelSize",), p, "optics", True)
    if "rlnOpticsGroup" not in opt.columns:
        opt.insert(0, "rlnOpticsGroup", np.arange(1, len(opt) + 1))
    if "rlnOpticsGroupName" not in opt.columns:
        opt.insert(0, "rlnOpticsGroupName", [f"opticsGroup{g}" for g in opt["rlnOpticsGroup"]])
    parts = particles
    if "rlnOpticsGroup" not in parts.columns:
        parts = parts.copy()
        parts["rlnOpticsGroup"] = int(opt["rlnOpticsGroup"].iloc[0])
    blocks: dict[str, Block] = {}
    if general:
        blocks["general"] = general
    blocks["optics"] = opt
    blocks["particles"] = parts
    return write_star(p, blocks, overwrite=overwrite)


# ---- describe -----------------------------------------------------------------------------------------


def _rng(values: pd.Series) -> list[float] | None:
    v = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return None
    return [float(v.min()), float(v.max())]


def _median(values: pd.Series) -> float | None:
    v = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    v = v[np.isfinite(v)]
    return float(np.median(v)) if v.size else None


def _kind(blocks: dict[str, Block]) -> str:
    cols: set[str] = set()
    for v in blocks.values():
        cols |= set(v.columns if isinstance(v, pd.DataFrame) else v.keys())
    if {"rlnTomoParticlesFile", "rlnTomoTomogramsFile"} & cols and "rlnTomoName" not in cols:
        return "optimisation_set"
    if "global" in blocks and "rlnTomoName" in cols and not (set(CENTERED_XYZ) <= cols or set(PIXEL_XYZ) <= cols):
        return "tomograms"
    if "rlnTomoName" in cols and (set(CENTERED_XYZ) <= cols or set(PIXEL_XYZ) <= cols):
        return "particles"
    if "rlnTomoNominalStageTiltAngle" in cols:
        return "tilt_series"
    if set(CTF_REQUIRED) <= cols:
        return "ctf"
    if "rlnMicrographName" in cols:
        return "micrographs"
    return "unknown"


def _tilt_facts(df: pd.DataFrame) -> dict[str, Any]:
    facts: dict[str, Any] = {"n_tilts": int(len(df))}
    if "rlnTomoNominalStageTiltAngle" in df.columns:
        facts["tilt_range_deg"] = _rng(df["rlnTomoNominalStageTiltAngle"])
    if "rlnTomoNominalTiltAxisAngle" in df.columns:
        facts["tilt_axis_deg"] = _median(df["rlnTomoNominalTiltAxisAngle"])
    if "rlnMicrographPreExposure" in df.columns:
        pre = np.sort(pd.to_numeric(df["rlnMicrographPreExposure"], errors="coerce").to_numpy(dtype=float))
        pre = pre[np.isfinite(pre)]
        facts["pre_exposure_range_e_per_A2"] = [float(pre[0]), float(pre[-1])] if pre.size else None
        if pre.size > 1:
            facts["dose_per_tilt_e_per_A2"] = float(np.median(np.diff(pre)))
    facts.update(_defocus_facts(df))
    if "rlnTomoNominalDefocus" in df.columns:
        facts["nominal_defocus_um"] = _rng(df["rlnTomoNominalDefocus"])
    return facts


def _defocus_facts(df: pd.DataFrame) -> dict[str, Any]:
    facts: dict[str, Any] = {}
    if "rlnDefocusU" in df.columns and "rlnDefocusV" in df.columns:
        u = pd.to_numeric(df["rlnDefocusU"], errors="coerce").to_numpy(dtype=float)
        v = pd.to_numeric(df["rlnDefocusV"], errors="coerce").to_numpy(dtype=float)
        mean = (u + v) / 2
        ok = np.isfinite(mean)
        if ok.any():
            facts["defocus_range_A"] = [float(mean[ok].min()), float(mean[ok].max())]
            facts["defocus_median_A"] = float(np.median(mean[ok]))
            facts["astigmatism_max_A"] = float(np.max(np.abs(u - v)[ok]))
    if "rlnCtfMaxResolution" in df.columns:
        facts["ctf_max_resolution_range_A"] = _rng(df["rlnCtfMaxResolution"])
    return facts


def describe(path: str | PathLike[str]) -> dict[str, Any]:
    """Summary of any STAR file: blocks (rows, columns) and, for known kinds, the facts.

    Returns ``{"path", "kind", "blocks": {name: {"type": "loop"|"pairs", "rows", "columns"}}, "facts"}``
    where ``kind`` is ``tomograms``, ``tilt_series``, ``ctf``, ``particles``, ``micrographs``,
    ``optimisation_set`` (RELION 5: the particles and tomograms files it names) or ``unknown`` and ``facts`` holds e.g. ``n_tilts``, ``tilt_range_deg``, ``dose_per_tilt_e_per_A2``,
    ``defocus_range_A`` (mean of U and V, Å), ``n_particles``, ``tomograms`` ({name: count}).
    """
    p = Path(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        blocks = read_star(p, strict=False)
    info: dict[str, Any] = {"path": str(p), "blocks": {}, "facts": {},
                            "problems": [str(w.message) for w in caught if issubclass(w.category, FormatWarning)]}
    for name, block in blocks.items():
        if isinstance(block, pd.DataFrame):
            info["blocks"][name] = {"type": "loop", "rows": int(len(block)), "columns": list(block.columns)}
        else:
            info["blocks"][name] = {"type": "pairs", "rows": 1, "columns": list(block.keys())}
    kind = _kind(blocks)
    info["kind"] = kind
    facts: dict[str, Any] = info["facts"]
    if kind == "tomograms":
        glob = _merge_optics(_table(blocks, "global"), _table(blocks, "optics"))  # type: ignore[arg-type]
        facts["n_tomograms"] = int(len(glob))
        facts["tomograms"] = [str(n) for n in glob["rlnTomoName"]]
        for col in TOMOGRAMS_PIXEL_SIZE:
            if col in glob.columns:
                facts["pixel_size_A"] = _rng(glob[col])
                break
        if all(c in glob.columns for c in ("rlnTomoSizeX", "rlnTomoSizeY", "rlnTomoSizeZ")):
            sizes = glob[["rlnTomoSizeX", "rlnTomoSizeY", "rlnTomoSizeZ"]].apply(pd.to_numeric, errors="coerce")
            facts["sizes_px"] = [[int(x) if np.isfinite(x) and abs(x) < 2**62 else None for x in row]
                                 for row in sizes.to_numpy(dtype=float)]
        per_tomo = {k: v for k, v in blocks.items() if isinstance(v, pd.DataFrame) and k in set(facts["tomograms"])}
        if per_tomo:
            facts["n_tilts"] = {k: int(len(v)) for k, v in per_tomo.items()}
    elif kind in ("tilt_series", "ctf", "micrographs"):
        _, df = _per_tilt_block(blocks, p, False)
        if kind == "ctf":
            facts["n_tilts"] = int(len(df))
            facts.update(_defocus_facts(df))
        elif kind == "tilt_series":
            facts.update(_tilt_facts(df))
        else:
            facts["n_micrographs"] = int(len(df))
            if "rlnAccumMotionTotal" in df.columns:
                facts["motion_total_range_A"] = _rng(df["rlnAccumMotionTotal"])
        optics = _table(blocks, "optics")
        if optics is not None:
            for col in ("rlnMicrographPixelSize", "rlnMicrographOriginalPixelSize"):
                if col in optics.columns and len(optics):
                    facts["pixel_size_A"] = _median(optics[col].iloc[:1])
                    break
    elif kind == "particles":
        df = blocks["particles"] if "particles" in blocks else _per_tilt_block(blocks, p, False)[1]
        assert isinstance(df, pd.DataFrame)
        facts["n_particles"] = int(len(df))
        counts = df["rlnTomoName"].astype(str).value_counts(sort=False)
        facts["tomograms"] = {str(k): int(v) for k, v in counts.items()}
        facts["relion_version"] = _particles_relion_version(df, blocks.get("general"))
    elif kind == "optimisation_set":
        for key, col in (("particles_file", "rlnTomoParticlesFile"), ("tomograms_file", "rlnTomoTomogramsFile"),
                         ("trajectories_file", "rlnTomoTrajectoriesFile"), ("manifolds_file", "rlnTomoManifoldsFile"),
                         ("reference_map_1", "rlnTomoReferenceMap1File"), ("reference_map_2", "rlnTomoReferenceMap2File"),
                         ("mask_file", "rlnTomoReferenceMaskFile")):
            for block in blocks.values():
                value = block[col].iloc[0] if isinstance(block, pd.DataFrame) and col in block.columns and len(block) \
                    else (block.get(col) if isinstance(block, dict) else None)
                if value is not None:
                    facts[key] = str(value)
                    break
    return info
