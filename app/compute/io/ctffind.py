"""CTFFIND4 / CTFFIND5 text output (``diagnostic_output.txt``): one row per micrograph or tilt image.

Layout: comment lines starting with ``#``, then one whitespace-separated row of numbers per image::

    # Output from CTFFind version 4.1.14, run on 2021-06-01 12:00:00
    # Input file: TS_01.mrc ; Number of micrographs: 41
    # Pixel size: 1.350 Angstroms ; acceleration voltage: 300.0 keV ; spherical aberration: 2.70 mm ; amplitude contrast: 0.07
    # Box size: 512 pixels ; min. res.: 30.0 Angstroms ; max. res.: 5.0 Angstroms ; min. def.: 5000.0 um; max. def. 50000.0 um
    # Columns: #1 - micrograph number; #2 - defocus 1 [Angstroms]; #3 - defocus 2; #4 - azimuth of astigmatism; ...
    1.000000 39224.28 39029.84 -15.48 0.000000 0.036 7.17

Columns of the returned DataFrame (units in the names):

=====  ============================  =========================================================
 #     column                        meaning
=====  ============================  =========================================================
 1     ``micrograph_number``          1-based image index (int)
 2     ``defocus_1_A``                defocus along the major axis, Å, positive = underfocus
 3     ``defocus_2_A``                defocus along the minor axis, Å
 4     ``astigmatism_azimuth_deg``    angle of the defocus-1 axis from the image x axis, degrees
 5     ``phase_shift_rad``            additional phase shift (phase plate), radians
 6     ``cross_correlation``          fit score
 7     ``fit_resolution_A``           spacing up to which Thon rings were fit, Å
 8     ``sample_thickness_A``         CTFFIND5 sample thickness (Å); if the header names the 8th
                                      column otherwise (e.g. ``dfHand``), a snake-case name of it
=====  ============================  =========================================================

RELION's ``rlnDefocusU/V/Angle`` are CTFFIND's defocus 1/2/azimuth unchanged.

Header facts, when present, go into ``df.attrs``: ``ctffind_version`` (str), ``input_file`` (str),
``pixel_size_A``, ``voltage_kV``, ``cs_mm``, ``amplitude_contrast``, ``box_size_px``,
``min_resolution_A``, ``max_resolution_A``, ``min_defocus_A``, ``max_defocus_A`` (floats).
"""

from __future__ import annotations

import re
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import FormatError, problem

BASE_COLUMNS = (
    "micrograph_number",
    "defocus_1_A",
    "defocus_2_A",
    "astigmatism_azimuth_deg",
    "phase_shift_rad",
    "cross_correlation",
    "fit_resolution_A",
)

_HEADER_NUMBERS: dict[str, tuple[str, str]] = {
    # attr name: (regex on the header text, unit note)
    "pixel_size_A": (r"pixel size:\s*([-+0-9.eE]+)", "Å"),
    "voltage_kV": (r"acceleration voltage:\s*([-+0-9.eE]+)", "kV"),
    "cs_mm": (r"spherical aberration:\s*([-+0-9.eE]+)", "mm"),
    "amplitude_contrast": (r"amplitude contrast:\s*([-+0-9.eE]+)", ""),
    "box_size_px": (r"box size:\s*([-+0-9.eE]+)", "px"),
    "min_resolution_A": (r"min\. res\.:\s*([-+0-9.eE]+)", "Å"),
    "max_resolution_A": (r"max\. res\.:\s*([-+0-9.eE]+)", "Å"),
    # CTFFIND writes "um" but the values are Å (its own bug, kept by every version)
    "min_defocus_A": (r"min\. def\.:\s*([-+0-9.eE]+)", "Å"),
    "max_defocus_A": (r"max\. def\.:?\s*([-+0-9.eE]+)", "Å"),
}


def _snake(text: str) -> str:
    s = re.sub(r"\[.*?\]|\(.*?\)", "", text)
    s = re.sub(r"(?<=[a-z])(?=[A-Z])", "_", s.strip())
    s = re.sub(r"[^0-9A-Za-z]+", "_", s).strip("_").lower()
    return s or "column"


def _extra_column_names(columns_line: str | None, n: int) -> list[str]:
    """Names for columns 8.. from the ``# Columns:`` header (thickness -> sample_thickness_A)."""
    described: dict[int, str] = {}
    if columns_line:
        for m in re.finditer(r"#\s*(\d+)\s*-\s*([^;#]+)", columns_line):
            described[int(m.group(1))] = m.group(2).strip()
    names = []
    for k in range(8, n + 1):
        text = described.get(k, "")
        if "thickness" in text.lower():
            names.append("sample_thickness_A")
        elif text:
            names.append(_snake(text))
        else:
            names.append(f"column_{k}")
    return names


def _parse_header(lines: list[str]) -> tuple[dict[str, Any], str | None]:
    attrs: dict[str, Any] = {}
    columns_line = None
    text = " ".join(lines)
    m = re.search(r"CTF[Ff]ind version\s+([0-9][0-9A-Za-z.\-]*)", text)
    if m:
        attrs["ctffind_version"] = m.group(1).rstrip(",")
    m = re.search(r"Input file:\s*([^;]+?)\s*(;|$)", text)
    if m:
        attrs["input_file"] = m.group(1)
    for key, (pattern, _unit) in _HEADER_NUMBERS.items():
        m = re.search(pattern, text, flags=re.IGNORECASE)
        if m:
            attrs[key] = float(m.group(1))
    for ln in lines:
        if "columns" in ln.lower() and "#1" in ln.replace(" ", ""):
            columns_line = ln
    return attrs, columns_line


def read_ctffind_txt(path: str | PathLike[str], *, strict: bool = True) -> pd.DataFrame:
    """Read a CTFFIND4 (7 columns) or CTFFIND 4.1.x/5 (8 columns) text output.

    Returns a DataFrame with the columns in the module docstring (float64, ``micrograph_number`` int64)
    and the header facts in ``df.attrs``. Strict: a row with a different number of columns than the
    first, a non-number, or a non-positive defocus raises :class:`FormatError` naming the line;
    permissive: the row is skipped with a warning.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    header: list[str] = []
    rows: list[list[float]] = []
    ncol: int | None = None
    with open(p, encoding="utf-8", errors="replace") as fh:
        for lineno, raw in enumerate(fh, start=1):
            line = raw.strip()
            if not line:
                continue
            if line.startswith("#"):
                header.append(line.lstrip("#").strip())
                continue
            where = f"line {lineno}"
            parts = line.split()
            try:
                values = [float(v) for v in parts]
            except ValueError:
                problem(strict, p, where, f"not a row of numbers: {line[:60]!r}")
                continue
            if ncol is None:
                if len(values) < 7:
                    problem(strict, p, where, f"expected 7 or more columns (CTFFIND4), found {len(values)}")
                    continue
                ncol = len(values)
            if len(values) != ncol:
                problem(strict, p, where, f"expected {ncol} columns like the first row, found {len(values)}")
                continue
            if not (values[1] > 0 and values[2] > 0):
                problem(strict, p, where, f"defocus must be positive (underfocus, Å), got {values[1]}, {values[2]}")
                continue
            rows.append(values)
    attrs, columns_line = _parse_header(header)
    if ncol is None:
        raise FormatError(p, "rows", "no data rows (not a CTFFIND output, or cut short?)")
    names = list(BASE_COLUMNS) + _extra_column_names(columns_line, ncol)
    df = pd.DataFrame(np.asarray(rows, dtype=np.float64).reshape(-1, ncol), columns=names)
    df["micrograph_number"] = df["micrograph_number"].round().astype(np.int64)
    df.attrs.update(attrs)
    return df


def describe(path: str | PathLike[str]) -> dict[str, Any]:
    """Summary of a CTFFIND text output: rows, columns, header facts and ranges.

    ``{"path", "kind": "ctffind", "n_images", "columns", "header": {...}, "defocus_range_A": [min, max]
    of the mean of defocus 1 and 2, "astigmatism_max_A", "fit_resolution_range_A", "phase_shift": bool,
    ["sample_thickness_range_A"]}``.
    """
    df = read_ctffind_txt(path, strict=False)
    mean = (df["defocus_1_A"] + df["defocus_2_A"]) / 2
    out: dict[str, Any] = {
        "path": str(path),
        "kind": "ctffind",
        "n_images": int(len(df)),
        "columns": list(df.columns),
        "header": dict(df.attrs),
        "defocus_range_A": [float(mean.min()), float(mean.max())],
        "astigmatism_max_A": float((df["defocus_1_A"] - df["defocus_2_A"]).abs().max()),
        "fit_resolution_range_A": [float(df["fit_resolution_A"].min()), float(df["fit_resolution_A"].max())],
        "phase_shift": bool((df["phase_shift_rad"] != 0).any()),
    }
    if "sample_thickness_A" in df.columns:
        out["sample_thickness_range_A"] = [
            float(df["sample_thickness_A"].min()),
            float(df["sample_thickness_A"].max()),
        ]
    return out
