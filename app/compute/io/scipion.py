"""Scipion set files (``*.sqlite``): which set a file holds, and the tilt series of a ``SetOfTiltSeries``.

Every Scipion set is an sqlite database in pyworkflow's flat layout: ``Properties(key, value)`` with
``self`` = the set's class (``SetOfTiltSeries``, ``SetOfTiltSeriesM``, ``SetOfCoordinates3D``,
``SetOfCTFTomoSeries``, ``SetOfTomograms``, ...) and its attributes (``_samplingRate`` Å/px, ``_size``,
``_acquisition._voltage``, ...); ``Classes(id, label_property, column_name, class_name)`` mapping each
attribute of the items to a generic column (``self`` -> the item class, ``_tiltAngle`` -> ``c05``, ...);
``Objects(id, enabled, label, comment, creation, c01, c02, ...)`` one row per item.

A ``SetOfTiltSeries`` (scipion-em-tomo) nests a set in each item: the top tables list the tilt series
(``_tsId``, ``_samplingRate``, ``_acquisition.*`` ...), and each series keeps its tilt images in tables of
the same file named with a per-series prefix (``<prefix>Objects``, ``<prefix>Classes``,
``<prefix>Properties``; scipion-em-tomo maps a series to the prefix of its ``_tsId``, as pyworkflow does
``Class001_`` for the classes of a SetOfClasses). The prefix is found here from the table names: a nested
``...Objects`` table whose ``Classes`` give ``TiltImage``/``TiltImageM`` items and whose rows carry the
series' ``_tsId`` (or, lacking that column, whose prefix names the series id or object id). Tilt images:
``_tiltAngle`` (degrees), ``_acqOrder`` (acquisition order, as stored), ``_filename`` and ``_index`` (the
stack file and the 1-based section in it), ``_acquisition._accumDose`` / ``_acquisition._dosePerFrame``
(e⁻/Å², where present), ``_samplingRate``.

Other Scipion sets are recognised by name and refused (``SetOfCoordinates3D`` is read by
:mod:`tomoguide.compute.io.coords`).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from tomoguide.compute.io.errors import FormatError, problem

__all__ = ["ScipionTiltSeries", "describe", "read_scipion_tilt_series", "scipion_set_class"]

PathType = str | PathLike[str]

TILT_SERIES_SETS = ("SetOfTiltSeries", "SetOfTiltSeriesM")
COORDINATE_SETS = ("SetOfCoordinates3D",)


@dataclass
class ScipionTiltSeries:
    """One tilt series of a Scipion ``SetOfTiltSeries`` (images in the order of their object ids).

    Attributes:
        ts_id: ``_tsId``. enabled: the series' ``enabled`` flag. object_id: its row id.
        tilt_deg: (n,) ``_tiltAngle``. acquisition_order: (n,) ``_acqOrder`` as stored (-1 when absent).
        file_names: (n,) ``_filename``. section_index: (n,) ``_index`` (1-based section; 0 when absent).
        image_enabled: (n,) bool. pixel_size_A: ``_samplingRate`` of the series (or the set).
        acquisition: ``_acquisition.*`` values of the series (name without the prefix -> value).
        image_acquisition: per-image ``_acquisition.*`` columns -> (n,) float arrays.
    """

    ts_id: str
    enabled: bool
    object_id: int
    tilt_deg: np.ndarray
    acquisition_order: np.ndarray
    file_names: list[str]
    section_index: np.ndarray
    image_enabled: np.ndarray
    pixel_size_A: float | None = None
    acquisition: dict[str, Any] = field(default_factory=dict)
    image_acquisition: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def n_tilts(self) -> int:
        return int(self.tilt_deg.size)


def _connect(p: Path) -> sqlite3.Connection:
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    with p.open("rb") as fh:
        magic = fh.read(16)
    if magic != b"SQLite format 3\0":
        raise FormatError(p, None, "not an sqlite database (no 'SQLite format 3' header)")
    try:
        con = sqlite3.connect(f"file:{p}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise FormatError(p, None, f"not an sqlite file ({exc})") from exc
    con.text_factory = lambda b: b.decode("utf-8", "replace")
    return con


def _tables(con: sqlite3.Connection, p: Path) -> set[str]:
    try:
        return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except (sqlite3.Error, UnicodeDecodeError) as exc:
        raise FormatError(p, None, f"damaged sqlite database ({exc})") from exc


def _props(con: sqlite3.Connection, prefix: str) -> dict[str, Any]:
    return {str(k): v for k, v in con.execute(f'SELECT key, value FROM "{prefix}Properties"')}


def scipion_set_class(path: PathType) -> str:
    """The class of the Scipion set in ``path`` (``Properties`` row ``self``), e.g. ``"SetOfTiltSeries"``.

    Raises:
        FormatError: not sqlite, or no ``Properties``/``self`` (not a Scipion set).
    """
    p = Path(path)
    con = _connect(p)
    try:
        tables = _tables(con, p)
        if "Properties" not in tables or "Objects" not in tables:
            raise FormatError(p, "Properties", "no Properties/Objects tables: not a Scipion set file")
        try:
            cls = _props(con, "").get("self")
        except (sqlite3.Error, UnicodeDecodeError) as exc:
            raise FormatError(p, "Properties", f"unreadable Properties table ({exc}): not a Scipion set file") from exc
    finally:
        con.close()
    if not cls:
        raise FormatError(p, "Properties/self", "no set class: not a Scipion set file")
    return str(cls)


def _objects(con: sqlite3.Connection, prefix: str) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Rows of ``<prefix>Objects`` as {attribute label: value} (plus id/enabled), and label -> item class."""
    mapping: dict[str, str] = {}
    classes: dict[str, str] = {}
    for label, col, cls in con.execute(f'SELECT label_property, column_name, class_name FROM "{prefix}Classes"'):
        mapping[str(col)] = str(label)
        classes[str(label)] = str(cls)
    cur = con.execute(f'SELECT * FROM "{prefix}Objects" ORDER BY id')
    names = [d[0] for d in cur.description]
    rows = []
    for values in cur:
        row = {mapping.get(n, n): v for n, v in zip(names, values)}
        rows.append(row)
    return rows, classes


def _int(v: Any, default: int) -> int:
    try:
        return int(v) if v is not None else default
    except (TypeError, ValueError, OverflowError):
        return default


def _float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def read_scipion_tilt_series(path: PathType, *, strict: bool = True) -> list[ScipionTiltSeries]:
    """Read the tilt series of a Scipion ``SetOfTiltSeries`` / ``SetOfTiltSeriesM`` sqlite (module docstring).

    Raises:
        FormatError: naming the file and table/field: another Scipion set (named), no per-series image
            tables for a series, images without ``_tiltAngle``.
    """
    p = Path(path)
    cls = scipion_set_class(p)
    if cls not in TILT_SERIES_SETS:
        raise FormatError(p, "Properties/self", f"a Scipion {cls}: tomoguide reads SetOfTiltSeries(M) and "
                          "SetOfCoordinates3D sets only (not supported)")
    con = _connect(p)
    try:
        tables = _tables(con, p)
        set_props = _props(con, "")
        series_rows, _ = _objects(con, "")
        nested = {t[: -len("Objects")] for t in tables if t.endswith("Objects") and t != "Objects"}
        nested = {pre for pre in nested if f"{pre}Classes" in tables}
        out: list[ScipionTiltSeries] = []
        used: set[str] = set()
        for row in series_rows:
            ts_id = str(row.get("_tsId") or "")
            oid = _int(row.get("id"), 0)
            candidates = [f"{ts_id}_", f"id{oid}_", f"id{oid:03d}_", f"{ts_id}", f"id{oid}"]
            prefix = next((c for c in candidates if c in nested and c not in used), None)
            if prefix is None:  # look for the images' own _tsId
                for pre in sorted(nested - used):
                    rows, _ = _objects(con, pre)
                    if rows and str(rows[0].get("_tsId")) == ts_id:
                        prefix = pre
                        break
            if prefix is None:
                problem(strict, p, f"Objects/{ts_id or oid}", "no table of tilt images for this tilt series")
                continue
            used.add(prefix)
            images, img_classes = _objects(con, prefix)
            item_cls = img_classes.get("self", "")
            if item_cls and not item_cls.startswith("TiltImage"):
                problem(strict, p, f"{prefix}Classes/self", f"items are {item_cls}, not TiltImage")
            if images and "_tiltAngle" not in images[0]:
                raise FormatError(p, f"{prefix}Classes/_tiltAngle", "tilt images without a tilt angle column")
            tilt = np.array([_float(r.get("_tiltAngle")) for r in images])
            if np.any(~np.isfinite(tilt)):
                problem(strict, p, f"{prefix}Objects/_tiltAngle", "a tilt angle is not a number")
            acq = np.array([_int(r.get("_acqOrder"), -1) for r in images], dtype=np.int64)
            img_acq = {k.split(".", 1)[1]: np.array([_float(r.get(k)) for r in images])
                       for k in (images[0] if images else {}) if k.startswith("_acquisition.")}
            ps = _float(row.get("_samplingRate", set_props.get("_samplingRate")))
            out.append(ScipionTiltSeries(
                ts_id=ts_id, enabled=bool(row.get("enabled", 1)), object_id=oid, tilt_deg=tilt,
                acquisition_order=acq, file_names=[str(r.get("_filename") or "") for r in images],
                section_index=np.array([_int(r.get("_index"), 0) for r in images], dtype=np.int64),
                image_enabled=np.array([bool(r.get("enabled", 1)) for r in images], dtype=bool),
                pixel_size_A=ps if np.isfinite(ps) and ps > 0 else None,
                acquisition={k.split(".", 1)[1]: v for k, v in row.items() if k.startswith("_acquisition.")},
                image_acquisition=img_acq,
            ))
    except (sqlite3.Error, UnicodeDecodeError) as exc:
        raise FormatError(p, None, f"damaged sqlite database ({exc})") from exc
    finally:
        con.close()
    if not out:
        raise FormatError(p, "Objects", "no tilt series with their tilt images")
    return out


def describe(path: PathType, *, strict: bool = True) -> dict[str, Any]:
    """Facts for ``tomoguide inspect`` about any Scipion set file: tilt series sets are read, coordinate sets
    go to :func:`tomoguide.compute.io.coords.describe`, other sets are refused by name."""
    p = Path(path)
    cls = scipion_set_class(p)
    if cls in COORDINATE_SETS:
        from tomoguide.compute.io import coords

        return coords.describe(p)
    if cls not in TILT_SERIES_SETS:
        raise FormatError(p, "Properties/self", f"a Scipion {cls}: tomoguide reads SetOfTiltSeries(M) and "
                          "SetOfCoordinates3D sets only (not supported)")
    series = read_scipion_tilt_series(p, strict=strict)
    facts: dict[str, Any] = {
        "kind": "scipion_tilt_series_sqlite", "flavour": f"Scipion {cls}", "n_tilt_series": len(series),
        "tilt_series": {s.ts_id: s.n_tilts for s in series},
    }
    allt = np.concatenate([s.tilt_deg for s in series]) if series else np.zeros(0)
    if allt.size:
        facts["tilt_range_deg"] = [float(np.nanmin(allt)), float(np.nanmax(allt))]
    ps = {s.pixel_size_A for s in series if s.pixel_size_A}
    if ps:
        facts["pixel_size_A"] = sorted(ps)
    files = sorted({f for s in series for f in s.file_names if f})
    if files:
        facts["files"] = files[:5]
    return facts
