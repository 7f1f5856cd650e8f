"""AreTomo alignment files (``.aln``) and their conversion to IMOD transforms.

Layout of an ``.aln`` file (AreTomo 1.3 onwards, AreTomo2, AreTomo3)::

    # AreTomo Alignment / Priims bprmMn
    # RawSize = 4096 4096 51                 (nx ny nz of the input stack, px and sections)
    # NumPatches = 16                        (0: global alignment only)
    # DarkFrame =    13   13   -42.00        (one line per discarded view: frame, section, tilt deg)
    # AlphaOffset =    12.30                 (tilt-angle offset in degrees, already in TILT)
    # BetaOffset =     0.00
    # Thickness = 1910                       (optional, px)
    # SEC     ROT  GMAG  TX  TY  SMEAN  SFIT  SCALE  BASE  TILT
        0   84.4445  1.00000  13.382  21.802  1.00  1.00  1.00  0.00  -27.71
    ...
    # Local Alignment                        (optional: NumPatches rows per view)
       0   0  -558.42  -802.00  -100.07  24.43  1.0      (sec patch x y dx dy flag)

AreTomo 1.2 and older write a second line ``# 41  0`` (number of views, number of patches) instead of
the RawSize/NumPatches/DarkFrame/offset lines.

**Section numbers.** The first column, SEC, numbers the *kept* views (dark frames removed) in tilt order.
The real files disagree on where it starts: the 1.2 and 1.3 examples from lil-aretomo and the
alnfile file with dark frames count from 0, while the alnfile global-only file and the
cryoet-alignment fixtures (RawSize headers, i.e. 1.3+ layout) count from 1 — so the header cannot tell,
and this reader detects the base from the values: SEC must run consecutively from 0 or from 1
(``sec_base``); ``section`` = SEC - sec_base is the 0-based index of the view among the kept views.
Local rows are numbered the same way, detected separately. With a RawSize header the number of views
plus dark frames must equal nz. Where the kept views sit in the raw stack is given by
:attr:`AlnFile.raw_section_index` (raw sections minus the dark frames, assuming the raw stack is in
tilt order, as AreTomo sorts it).

**Conversion to IMOD** (:func:`aln_to_imod`): AreTomo's global model is ``aligned = R(ROT) (raw - T)``
with ``T = (TX, TY)`` in raw-image pixels from the image centre and ``R(a) = [[cos a, -sin a],
[sin a, cos a]]``; so the IMOD row is ``A = GMAG * R(ROT)``, ``D = -A T``. This reproduces the
reference conversion of teamtomo's alnfile (``global_no_local.aln`` -> ``.xf``/``.tlt``). In IMOD's
convention ``A = R(-tilt axis)``, so the tilt-axis angle in tomoguide's sense
(:mod:`tomoguide.geometry`) is ``-ROT``; ``(TX, TY)`` is where the aligned centre lies in the raw image.
The ``.tlt`` angles are the TILT column (which already includes AlphaOffset).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from tomoguide.compute.io.errors import FormatError, problem

__all__ = ["AlnDarkFrames", "AlnFile", "AlnGlobal", "AlnLocal", "aln_to_imod", "describe", "read_aln"]

PathType = str | PathLike[str]

_GLOBAL_COLUMNS = ("sec", "rot_deg", "gmag", "tx_px", "ty_px", "smean", "sfit", "scale", "base", "tilt_deg")


@dataclass
class AlnGlobal:
    """Global alignment rows, one entry per kept view (arrays of shape (n,), float64 unless stated).

    ``sec`` (int64) is the SEC column as written; ``section`` (int64) the 0-based index among kept views.
    ``rot_deg``: AreTomo's in-plane rotation (degrees); ``gmag``: magnification; ``tx_px``, ``ty_px``:
    shifts in raw-image pixels; ``smean``, ``sfit``, ``scale``, ``base``: AreTomo's fit statistics;
    ``tilt_deg``: tilt angle in degrees including AlphaOffset.
    """

    sec: np.ndarray
    section: np.ndarray
    rot_deg: np.ndarray
    gmag: np.ndarray
    tx_px: np.ndarray
    ty_px: np.ndarray
    smean: np.ndarray
    sfit: np.ndarray
    scale: np.ndarray
    base: np.ndarray
    tilt_deg: np.ndarray

    def __len__(self) -> int:
        return int(self.sec.shape[0])


@dataclass
class AlnDarkFrames:
    """Views AreTomo discarded: ``frame`` and ``section`` (int64, as written) and ``tilt_deg`` (n_dark,)."""

    frame: np.ndarray
    section: np.ndarray
    tilt_deg: np.ndarray

    def __len__(self) -> int:
        return int(self.frame.shape[0])


@dataclass
class AlnLocal:
    """Local (patch) alignment: arrays of shape (n_patches, n_views) (view axis in file order).

    ``x_px``, ``y_px``: expected patch centre in the view, px from the image centre; ``dx_px``,
    ``dy_px``: measured shift from that centre, px; ``flag``: 1.0 reliable, 0.0 not.
    """

    x_px: np.ndarray
    y_px: np.ndarray
    dx_px: np.ndarray
    dy_px: np.ndarray
    flag: np.ndarray

    @property
    def n_patches(self) -> int:
        return int(self.x_px.shape[0])


@dataclass
class AlnFile:
    """An AreTomo ``.aln`` file (see the module docstring for the layout and numbering)."""

    path: str
    header_style: str  # "1.3+" (RawSize header) or "1.2" ("# n_views n_patches")
    raw_size: tuple[int, int, int] | None  # (nx, ny, nz) px, px, sections
    num_patches: int
    alpha_offset_deg: float | None
    beta_offset_deg: float | None
    thickness_px: int | None
    dark_frames: AlnDarkFrames
    global_rows: AlnGlobal
    sec_base: int
    local: AlnLocal | None

    @property
    def n_views(self) -> int:
        return len(self.global_rows)

    @property
    def raw_section_index(self) -> np.ndarray:
        """(n,) int64 0-based section of each kept view in the raw stack (raw sections minus dark frames).

        Without a RawSize header (or if it disagrees) this is ``section`` itself.
        """
        n = self.n_views
        if self.raw_size is None or self.raw_size[2] != n + len(self.dark_frames):
            return self.global_rows.section.copy()
        dark = set(int(s) for s in self.dark_frames.frame)
        kept = np.array([i for i in range(self.raw_size[2]) if i not in dark], dtype=np.int64)
        return kept if kept.size == n else self.global_rows.section.copy()


def _floats(parts: list[str]) -> list[float]:
    return [float(p) for p in parts]


def read_aln(path: PathType, *, strict: bool = True) -> AlnFile:
    """Read an AreTomo ``.aln`` file (AreTomo 1.2, 1.3+, AreTomo2/3); see the module docstring.

    Strict mode raises :class:`FormatError` (``FILE: FIELD: message``) for a malformed line, SEC numbers
    that do not run consecutively from 0 or 1, a view count that disagrees with RawSize and the dark
    frames, or a local block whose size is not NumPatches x views; ``strict=False`` warns and keeps what
    it could read (an incomplete local block is dropped).
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.splitlines()
    if not lines or not lines[0].startswith("# AreTomo Alignment"):
        raise FormatError(path, "line 1", "not an AreTomo alignment file (no '# AreTomo Alignment' header)")

    raw_size: tuple[int, int, int] | None = None
    num_patches: int | None = None
    alpha = beta = None
    thickness = None
    header_style = "1.3+"
    old_counts: tuple[int, int] | None = None
    dark: list[tuple[int, int, float]] = []
    glob: list[list[float]] = []
    local: list[list[float]] = []
    section = "header"

    for lineno, raw in enumerate(lines[1:], start=2):
        line = raw.strip()
        if not line:
            continue
        where = f"line {lineno}"
        if line.startswith("#"):
            body = line[1:].strip()
            key, _, value = body.partition("=")
            key = key.strip()
            try:
                if body.startswith("SEC"):
                    section = "global"
                elif body.lower().startswith("local alignment"):
                    section = "local"
                elif key == "RawSize":
                    vals = [int(v) for v in value.split()]
                    if len(vals) != 3:
                        raise ValueError("expected 3 integers")
                    raw_size = (vals[0], vals[1], vals[2])
                elif key == "NumPatches":
                    num_patches = int(value)
                elif key == "DarkFrame":
                    f, s, t = value.split()
                    dark.append((int(f), int(s), float(t)))
                elif key == "AlphaOffset":
                    alpha = float(value)
                elif key == "BetaOffset":
                    beta = float(value)
                elif key == "Thickness":
                    thickness = int(float(value))
                elif re.fullmatch(r"\d+\s+\d+", body) and section == "header":
                    a, b = body.split()
                    old_counts = (int(a), int(b))
                    header_style = "1.2"
                # other comment lines are ignored
            except ValueError as err:
                problem(strict, path, f"{where} ({key or body[:20]})", f"cannot read {line!r}: {err}")
            continue
        parts = line.split()
        try:
            if section == "global":
                if len(parts) != 10:
                    raise ValueError(f"expected 10 columns, got {len(parts)}")
                glob.append(_floats(parts))
            elif section == "local":
                if len(parts) != 7:
                    raise ValueError(f"expected 7 columns, got {len(parts)}")
                local.append(_floats(parts))
            else:
                raise ValueError("data line before the '# SEC' column header")
        except ValueError as err:
            problem(strict, path, where, f"{err}: {line!r}")

    if not glob:
        raise FormatError(path, "SEC", "no global alignment rows")
    g = np.asarray(glob, dtype=np.float64)
    n = g.shape[0]
    sec = g[:, 0].astype(np.int64)
    if not np.all(g[:, 0] == sec):
        problem(strict, path, "SEC", "section numbers are not integers")
    sec_base = int(sec[0]) if sec[0] in (0, 1) else 0
    if sec[0] not in (0, 1) or not np.array_equal(sec, sec_base + np.arange(n)):
        problem(strict, path, "SEC", f"section numbers do not run consecutively from 0 or 1: {sec[:5].tolist()}...")
    if old_counts is not None:
        if num_patches is None:
            num_patches = old_counts[1]
        if old_counts[0] != n:
            problem(strict, path, "line 2", f"header says {old_counts[0]} views, file holds {n}")
    if num_patches is None:
        num_patches = 0
    if raw_size is not None and raw_size[2] != n + len(dark):
        problem(
            strict, path, "RawSize",
            f"nz = {raw_size[2]} but the file holds {n} views and {len(dark)} dark frames",
        )

    cols = {name: g[:, i] for i, name in enumerate(_GLOBAL_COLUMNS)}
    rows = AlnGlobal(
        sec=sec, section=sec - sec_base,
        **{k: np.ascontiguousarray(v) for k, v in cols.items() if k != "sec"},
    )

    loc: AlnLocal | None = None
    if local:
        arr = np.asarray(local, dtype=np.float64)
        if num_patches <= 0 or arr.shape[0] != num_patches * n:
            problem(
                strict, path, "Local Alignment",
                f"{arr.shape[0]} rows, expected NumPatches x views = {num_patches} x {n} = {num_patches * n}"
                " (local block dropped)",
            )
        else:
            lsec = arr[:, 0].astype(np.int64)
            lbase = int(lsec.min())
            lpatch = arr[:, 1].astype(np.int64)
            vi, pi = lsec - lbase, lpatch
            if (
                lbase not in (0, 1) or vi.max() >= n or pi.max() >= num_patches or pi.min() < 0
                or np.unique(vi * num_patches + pi).size != arr.shape[0]
            ):
                problem(strict, path, "Local Alignment", "section/patch numbers do not cover views x patches")
            else:
                grids = [np.zeros((num_patches, n)) for _ in range(5)]
                for k, grid in enumerate(grids):
                    grid[pi, vi] = arr[:, 2 + k]
                loc = AlnLocal(*grids)
    elif num_patches > 0:
        problem(strict, path, "NumPatches", f"{num_patches} patches announced but no local alignment rows")

    d = np.asarray(dark, dtype=np.float64).reshape(-1, 3)
    return AlnFile(
        path=str(path),
        header_style=header_style,
        raw_size=raw_size,
        num_patches=int(num_patches),
        alpha_offset_deg=alpha,
        beta_offset_deg=beta,
        thickness_px=thickness,
        dark_frames=AlnDarkFrames(
            frame=d[:, 0].astype(np.int64), section=d[:, 1].astype(np.int64), tilt_deg=d[:, 2].copy()
        ),
        global_rows=rows,
        sec_base=sec_base,
        local=loc,
    )


def aln_to_imod(aln: AlnFile) -> tuple[np.ndarray, np.ndarray]:
    """IMOD transforms and tilt angles of the kept views of an ``.aln`` file.

    Returns:
        xf: (n, 6) float64 rows ``A11 A12 A21 A22 DX DY`` with ``A = GMAG R(ROT)``, ``D = -A (TX, TY)``
            (px of the stack AreTomo aligned; see the module docstring).
        tilt_deg: (n,) float64, the TILT column.
    """
    g = aln.global_rows
    a = np.radians(g.rot_deg)
    c, s = np.cos(a) * g.gmag, np.sin(a) * g.gmag
    a11, a12, a21, a22 = c, -s, s, c
    dx = -(a11 * g.tx_px + a12 * g.ty_px)
    dy = -(a21 * g.tx_px + a22 * g.ty_px)
    return np.stack([a11, a12, a21, a22, dx, dy], axis=1), g.tilt_deg.copy()


def describe(path: PathType, *, strict: bool = True) -> dict[str, Any]:
    """Summary of an ``.aln`` file for display: views, dark frames, angle range, rotation, patches, etc."""
    aln = read_aln(path, strict=strict)
    g = aln.global_rows
    rot = np.radians(g.rot_deg)
    mean_rot = float(np.degrees(np.arctan2(np.sin(rot).mean(), np.cos(rot).mean())))
    return {
        "kind": "aln",
        "header_style": aln.header_style,
        "n_views": aln.n_views,
        "n_dark_frames": len(aln.dark_frames),
        "raw_size": aln.raw_size,
        "sec_base": aln.sec_base,
        "min_tilt_deg": float(g.tilt_deg.min()),
        "max_tilt_deg": float(g.tilt_deg.max()),
        "mean_rot_deg": mean_rot,
        "tilt_axis_deg": -mean_rot,
        "max_shift_px": float(np.hypot(g.tx_px, g.ty_px).max()),
        "alpha_offset_deg": aln.alpha_offset_deg,
        "thickness_px": aln.thickness_px,
        "num_patches": aln.num_patches,
        "has_local": aln.local is not None,
    }
