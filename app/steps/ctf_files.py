"""Per-tilt CTF made by other programs, for the entry points (tilt series imported with a defocus file; the CTF
step with ``source = "files"``).

One file per tilt series, found by the series' name (case ignored) in a folder (:func:`find_ctf_file`):

==========================  ===================  =======================================================
file                        program              rows and views
==========================  ===================  =======================================================
``NAME.defocus``            IMOD ctfplotter      one line per fitted range of views (versions 1-3); the
                                                 views are those of the stack ctfplotter ran on
``NAME.xml``                Warp / WarpTools     per-tilt ``GridCTF`` (+ delta, angle), stack order
``NAME.star``               RELION 5             per-tilt STAR (``rlnDefocusU/V/Angle``; images
                                                 ``k@stack``: view k)
``NAME_ctf.txt``/``NAME.txt``  CTFFIND 4/5       one row per image of the stack, in stack order
==========================  ===================  =======================================================

**Conventions** (checked, one-line refusal naming file and field otherwise): defocus in Å, **positive =
underfocus** (CTFFIND, RELION and Warp's export write it so; IMOD's nm are converted by its reader); a value ≤ 0
(a file written with the other sign) or below 100 Å (µm written instead of Å) is refused. Astigmatism: U ≥ V with
the angle of U from image X towards Y (CTFFIND's "azimuth", RELION's ``rlnDefocusAngle``, ctfplotter's angle,
Warp's ``DefocusAngle``: all the same axis); rows with U < V are put in this form (U and V swapped, angle + 90°),
angles wrapped into [−90°, 90°).

**Matching views.** The series' views are matched to the file's rows: by the stack section when the series was
imported from a stack and the file was made on it (CTFFIND and ctfplotter number the stack's images; when the file
also records tilts, the sections' tilts must agree with the views' within 0.5° after one common offset, else the
file is refused as made on another stack); Warp and RELION files, which number the images of their own stack, by
tilt angle. Else by tilt angle when the file records angles (RELION's nominal
tilt, Warp's ``Angles``, ctfplotter's single-view ranges, or ``NAME.rawtlt``/``NAME.tlt`` beside a CTFFIND file),
within 0.5° after one common offset; else, when the file has exactly one row per view, in ascending tilt order
(the log says it was assumed). A view the file does not cover is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tomoguide.compute.io.errors import FormatError

MIN_DEFOCUS_A = 100.0
MAX_DEFOCUS_A = 300000.0


@dataclass
class CtfTable:
    """One file's per-tilt CTF, rows in the file's order. ``views``: 0-based stack section of each row (None when
    the file does not say); ``tilt_deg``: the tilt of each row when recorded; ``u_A``/``v_A``/``angle_deg`` in the
    conventions of the module docstring; ``resolution_A``: fit resolution when recorded (else NaN)."""

    path: Path
    kind: str
    u_A: np.ndarray
    v_A: np.ndarray
    angle_deg: np.ndarray
    views: np.ndarray | None = None
    tilt_deg: np.ndarray | None = None
    resolution_A: np.ndarray | None = None


def find_ctf_file(folder: Path, name: str) -> Path:
    """The CTF file of series ``name`` in ``folder`` (see the module table; case ignored); FormatError naming what
    was looked for otherwise."""
    if not folder.is_dir():
        raise FormatError(folder, "ctf_dir", "no such folder")
    files = {p.name.lower(): p for p in sorted(folder.iterdir()) if p.is_file()}
    low = name.lower()
    for cand in (f"{low}.defocus", f"{low}.xml", f"{low}.star", f"{low}_ctf.txt", f"{low}.txt"):
        if cand in files:
            return files[cand]
    raise FormatError(folder, name, f"no CTF file for this tilt series (expected {name}.defocus from IMOD ctfplotter, "
                      f"{name}.xml from Warp, {name}.star from RELION 5, or {name}_ctf.txt / {name}.txt from CTFFIND)")


def _normalise(path: Path, field: str, u: np.ndarray, v: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, ...]:
    u, v, a = (np.asarray(x, np.float64).copy() for x in (u, v, a))
    for arr, what in ((u, "U"), (v, "V")):
        bad = np.flatnonzero(~np.isfinite(arr) | (arr <= 0))
        if bad.size:
            raise FormatError(path, field, f"row {bad[0] + 1}: defocus {what} = {arr[bad[0]]:g}: not a positive number "
                              "(underfocus must be positive, in Å; a file written with the other sign is not read)")
        small = np.flatnonzero(arr < MIN_DEFOCUS_A)
        if small.size:
            raise FormatError(path, field, f"row {small[0] + 1}: defocus {arr[small[0]]:g} Å: too small for Å (µm "
                              "written instead of Å?)")
        big = np.flatnonzero(arr > MAX_DEFOCUS_A)
        if big.size:
            raise FormatError(path, field, f"row {big[0] + 1}: defocus {arr[big[0]]:g} Å beyond 30 µm (nm or another "
                              "unit?)")
    if not np.all(np.isfinite(a)):
        raise FormatError(path, field, "an astigmatism angle is not a number")
    swap = u < v
    u[swap], v[swap] = v[swap].copy(), u[swap].copy()
    a[swap] += 90.0
    a = (a + 90.0) % 180.0 - 90.0
    return u, v, a


def _relion_view(name: str) -> int | None:
    head = str(name).split("@", 1)[0]
    return int(head) - 1 if "@" in str(name) and head.strip().isdigit() else None


def read_ctf_file(path: Path, *, n_stack_views: int | None = None) -> CtfTable:
    """Read one per-tilt CTF file of any kind in the module table (by its name and content)."""
    path = Path(path)
    low = path.name.lower()
    if low.endswith(".defocus"):
        from tomoguide.compute.io.imod import read_ctfplotter_defocus

        d = read_ctfplotter_defocus(path)
        u, v, a = _normalise(path, "defocus", d.defocus_u_A, d.defocus_v_A, d.astigmatism_angle_deg)
        views = np.asarray(d.views, np.int64)
        tilt = None
        single = d.ranges[:, 0] == d.ranges[:, 1]
        if single.all() and len(d.ranges) == views.size:
            order = np.argsort(d.ranges[:, 0])
            tilt = np.asarray(d.range_tilts_deg[order, 0], np.float64)
            if d.tilts_inverted:
                tilt = -tilt
        return CtfTable(path, "IMOD ctfplotter", u, v, a, views=views, tilt_deg=tilt)
    if low.endswith(".xml"):
        from tomoguide.compute.io.warp import read_warp_tilt_series_xml

        w = read_warp_tilt_series_xml(path)
        if w.defocus_u_A is None or w.defocus_v_A is None or w.defocus_angle_deg is None:
            raise FormatError(path, "GridCTF", "no per-tilt defocus (the series' CTF was not fitted in Warp)")
        u, v, a = _normalise(path, "GridCTF", w.defocus_u_A, w.defocus_v_A, w.defocus_angle_deg)
        return CtfTable(path, "Warp XML", u, v, a, views=np.arange(w.n_tilts), tilt_deg=np.asarray(w.tilt_deg, float))
    if low.endswith(".star"):
        import pandas as pd

        from tomoguide.compute.io.star import read_tilt_series_star

        df = read_tilt_series_star(path)
        block = df.attrs.get("block", "")
        for col in ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle"):
            if col not in df.columns:
                raise FormatError(path, f"data_{block}/{col}", "missing column: the per-tilt STAR holds no CTF")
        num = {c: pd.to_numeric(df[c], errors="coerce").to_numpy(float)
               for c in ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle")}
        u, v, a = _normalise(path, f"data_{block}/rlnDefocusU", num["rlnDefocusU"], num["rlnDefocusV"],
                             num["rlnDefocusAngle"])
        name_col = next((c for c in ("rlnMicrographName", "rlnTomoTiltMovieFileName") if c in df.columns), None)
        views = None
        if name_col is not None:
            vs = [_relion_view(x) for x in df[name_col]]
            if all(x is not None for x in vs):
                views = np.asarray(vs, np.int64)
        res = pd.to_numeric(df["rlnCtfMaxResolution"], errors="coerce").to_numpy(float) \
            if "rlnCtfMaxResolution" in df.columns else None
        tilt = pd.to_numeric(df["rlnTomoNominalStageTiltAngle"], errors="coerce").to_numpy(float)
        return CtfTable(path, "RELION 5 STAR", u, v, a, views=views, tilt_deg=tilt, resolution_A=res)
    if low.endswith(".txt"):
        from tomoguide.compute.io.ctffind import read_ctffind_txt

        df = read_ctffind_txt(path)
        u, v, a = _normalise(path, "defocus_1", df["defocus_1_A"].to_numpy(float), df["defocus_2_A"].to_numpy(float),
                             df["astigmatism_azimuth_deg"].to_numpy(float))
        views = df["micrograph_number"].to_numpy(np.int64) - 1
        tilt = None
        stem = path.name[: -len("_ctf.txt")] if low.endswith("_ctf.txt") else path.stem
        for ext in (".rawtlt", ".tlt"):
            angle_file = next((p for p in path.parent.iterdir() if p.name.lower() == (stem + ext).lower()), None)
            if angle_file is not None:
                from tomoguide.compute.io.imod import read_rawtlt

                angles = read_rawtlt(angle_file)
                if views.max() >= angles.size:
                    raise FormatError(path, "micrograph_number", f"image {views.max() + 1} beyond the {angles.size} "
                                      f"angles of {angle_file.name}")
                tilt = angles[views]
                break
        return CtfTable(path, "CTFFIND", u, v, a, views=views, tilt_deg=tilt,
                        resolution_A=df["fit_resolution_A"].to_numpy(float))
    raise FormatError(path, "name", "not a CTF file tomoguide reads (.defocus, .xml, .star, CTFFIND .txt)")


#: CTF file kinds that number the images of the stack they were made on (matched by stack section)
STACK_NUMBERED: tuple[str, ...] = ("CTFFIND", "IMOD ctfplotter")


def ctf_values_for_views(table: CtfTable, view_tilts_deg: Any, sections: list[int] | None,
                         path: Path | None = None) -> np.ndarray:
    """(n, 4) ``[U Å, V Å, angle °, fit resolution Å (NaN unknown)]`` for the series' n views (nominal tilts
    ``view_tilts_deg``, ascending), matched as the module docstring says. FormatError naming the file when a view
    has no row."""
    p = path or table.path
    nom = np.asarray(view_tilts_deg, np.float64)
    n = nom.size
    m = table.u_A.size
    res = table.resolution_A if table.resolution_A is not None else np.full(m, np.nan)
    rows = np.column_stack([table.u_A, table.v_A, table.angle_deg, res])
    out = np.full((n, 4), np.nan)
    if sections is not None and table.views is not None and table.kind in STACK_NUMBERED:
        where = {int(v): k for k, v in enumerate(table.views)}
        for i, sec in enumerate(sections):
            if sec not in where:
                raise FormatError(p, "views", f"no defocus for image {sec + 1} of the stack (tilt {nom[i]:+.1f}°)")
            out[i] = rows[where[sec]]
        if table.tilt_deg is not None:  # the file says which tilt each image had: it must be this stack's
            t = np.asarray(table.tilt_deg, np.float64)[[where[sec] for sec in sections]]
            d = t - nom
            off = float(np.median(d))
            bad = np.flatnonzero(np.abs(d - off) > 0.5)
            if bad.size:
                i = int(bad[0])
                raise FormatError(p, "tilt angles", f"image {sections[i] + 1} has tilt {t[i]:+.2f}° in the file but "
                                  f"{nom[i]:+.2f}° in the imported stack: the file was made on another stack")
        return out
    if table.tilt_deg is not None:
        from tomoguide.steps.align import AlignmentFilesError, match_views_by_tilt

        try:
            if m >= n:  # each view's row (a file may cover views the imported stack no longer has)
                out[:] = rows[match_views_by_tilt(nom, table.tilt_deg, 0.0, p)[0]]
            else:
                idx, _ = match_views_by_tilt(table.tilt_deg, nom, 0.0, p)
                out[idx] = rows
        except AlignmentFilesError as exc:
            raise FormatError(p, "tilt angles", str(exc).split("tilt angles: ", 1)[-1]) from None
        missing = np.flatnonzero(~np.isfinite(out[:, 0]))
        if missing.size:
            raise FormatError(p, "views", f"no defocus for the series' view at {nom[missing[0]]:+.1f}° ({missing.size} "
                              f"of {n} views are not in the file)")
        return out
    if m != n:
        raise FormatError(p, "rows", f"{m} rows for the series' {n} views, and no tilt angles to match them by (put "
                          "NAME.rawtlt or NAME.tlt of the stack beside it)")
    order = np.argsort(table.views) if table.views is not None else np.arange(m)
    return rows[order]
