"""Scipion set files (:mod:`tomoguide.compute.io.scipion`).

No real Scipion ``tiltseries.sqlite`` is available (none in ../shared/data, none found in permissively
licensed repositories). The files here are written in pyworkflow's flat sqlite layout (Properties /
Classes / Objects, generic ``cNN`` columns mapped by Classes, one nested table set per tilt series) with the
attribute names of scipion-em-tomo's TiltSeries / TiltImage (``_tsId``, ``_tiltAngle``, ``_acqOrder``,
``_filename``, ``_index``, ``_acquisition._accumDose``), the values of EMPIAR-10164 TS_01 (41 tilts,
dose-symmetric ±60° in 3° steps, 3 e⁻/Å² per tilt).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from tomoguide.compute.io import scipion
from tomoguide.compute.io.errors import FormatError, FormatWarning


def _dose_symmetric(n: int = 41, step: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Tilts in stack order (ascending) and each tilt's 1-based acquisition order (0°, +3, -3, -6, +6, ...)."""
    tilts = (np.arange(n) - n // 2) * step
    seq = [0.0]
    k, sign = 1, 1
    while len(seq) < n:  # Hagen scheme: 0, +1, -1, -2, +2, +3, -3, ...
        seq += [sign * k * step, -sign * k * step]
        k, sign = k + 1, -sign
    order = np.array([seq.index(t) + 1 for t in tilts])
    return tilts, order


def _set(con: sqlite3.Connection, prefix: str, props: dict[str, str], attrs: list[tuple[str, str]],
         rows: list[tuple]) -> None:
    con.execute(f'CREATE TABLE "{prefix}Properties" (key TEXT UNIQUE, value TEXT DEFAULT NULL)')
    con.executemany(f'INSERT INTO "{prefix}Properties" VALUES (?, ?)', list(props.items()))
    con.execute(f'CREATE TABLE "{prefix}Classes" (id INTEGER PRIMARY KEY AUTOINCREMENT, label_property TEXT UNIQUE,'
                " column_name TEXT UNIQUE, class_name TEXT DEFAULT NULL)")
    con.execute(f'INSERT INTO "{prefix}Classes" (label_property, column_name, class_name) VALUES (?, ?, ?)',
                ("self", "c00", attrs[0][1]))
    cols = []
    for k, (label, cls) in enumerate(attrs[1:], start=1):
        cols.append(f"c{k:02d}")
        con.execute(f'INSERT INTO "{prefix}Classes" (label_property, column_name, class_name) VALUES (?, ?, ?)',
                    (label, f"c{k:02d}", cls))
    con.execute(f'CREATE TABLE "{prefix}Objects" (id INTEGER PRIMARY KEY, enabled INTEGER DEFAULT 1, label TEXT, '
                f"comment TEXT, creation DATE, {', '.join(c + ' DEFAULT NULL' for c in cols)})")
    marks = ", ".join("?" for _ in cols)
    con.executemany(f'INSERT INTO "{prefix}Objects" (id, enabled, label, comment, creation, {", ".join(cols)}) '
                    f"VALUES (?, ?, '', '', datetime('now'), {marks})", rows)


TS_ATTRS = [("self", "TiltSeries"), ("_tsId", "String"), ("_samplingRate", "Float"),
            ("_acquisition._voltage", "Float"), ("_acquisition._tiltAxisAngle", "Float")]
TI_ATTRS = [("self", "TiltImage"), ("_index", "Integer"), ("_filename", "String"), ("_tiltAngle", "Float"),
            ("_tsId", "String"), ("_acqOrder", "Integer"), ("_acquisition._accumDose", "Float")]


def _tilt_series_sqlite(path: Path, *, cls: str = "SetOfTiltSeries", prefixes: tuple[str, str] = ("TS_01_", "TS_03_"),
                        image_table_for_second: bool = True) -> Path:
    tilts, order = _dose_symmetric()
    con = sqlite3.connect(path)
    _set(con, "", {"self": cls, "_samplingRate": "1.35", "_size": "2"}, TS_ATTRS,
         [(1, 1, "TS_01", 1.35, 300.0, 85.3), (2, 0, "TS_03", 1.35, 300.0, 85.3)])
    for i, (ts, prefix) in enumerate(zip(("TS_01", "TS_03"), prefixes)):
        if i == 1 and not image_table_for_second:
            continue
        rows = [(k + 1, int(k != 5), k + 1, f"{ts}/{ts}.mrcs", float(t), ts, int(o), (int(o) - 1) * 3.0)
                for k, (t, o) in enumerate(zip(tilts, order))]
        _set(con, prefix, {"self": "TiltSeries", "_tsId": ts}, TI_ATTRS, rows)
    con.commit()
    con.close()
    return path


def test_read_tilt_series_set(tmp_path: Path) -> None:
    tilts, order = _dose_symmetric()
    p = _tilt_series_sqlite(tmp_path / "tiltseries.sqlite")
    assert scipion.scipion_set_class(p) == "SetOfTiltSeries"
    series = scipion.read_scipion_tilt_series(p)
    assert [s.ts_id for s in series] == ["TS_01", "TS_03"] and [s.enabled for s in series] == [True, False]
    s = series[0]
    assert s.n_tilts == 41 and s.pixel_size_A == 1.35
    np.testing.assert_array_equal(s.tilt_deg, tilts)
    np.testing.assert_array_equal(s.acquisition_order, order)
    assert s.tilt_deg[s.acquisition_order == 1][0] == 0.0 and set(np.abs(s.tilt_deg[s.acquisition_order <= 3])) == {0, 3}
    np.testing.assert_array_equal(s.image_acquisition["_accumDose"], (order - 1) * 3.0)
    np.testing.assert_array_equal(s.section_index, np.arange(1, 42))
    assert s.file_names[0] == "TS_01/TS_01.mrcs" and not s.image_enabled[5] and s.image_enabled.sum() == 40
    assert s.acquisition == {"_voltage": 300.0, "_tiltAxisAngle": 85.3}
    facts = scipion.describe(p)
    assert facts["flavour"] == "Scipion SetOfTiltSeries" and facts["tilt_series"] == {"TS_01": 41, "TS_03": 41}
    assert facts["tilt_range_deg"] == [-60.0, 60.0]


def test_other_prefix_styles_and_movies(tmp_path: Path) -> None:
    p = _tilt_series_sqlite(tmp_path / "m.sqlite", cls="SetOfTiltSeriesM", prefixes=("id1_", "other_"))
    series = scipion.read_scipion_tilt_series(p)  # id1_ by object id, other_ by the images' _tsId
    assert [s.ts_id for s in series] == ["TS_01", "TS_03"] and all(s.n_tilts == 41 for s in series)
    assert scipion.describe(p)["flavour"] == "Scipion SetOfTiltSeriesM"


def test_refusals(tmp_path: Path) -> None:
    ctf = _tilt_series_sqlite(tmp_path / "ctfs.sqlite", cls="SetOfCTFTomoSeries")
    for fn in (scipion.read_scipion_tilt_series, scipion.describe):
        with pytest.raises(FormatError, match=r"ctfs\.sqlite: Properties/self: a Scipion SetOfCTFTomoSeries.*"
                                              r"not supported"):
            fn(ctf)
    missing = _tilt_series_sqlite(tmp_path / "half.sqlite", image_table_for_second=False)
    with pytest.raises(FormatError, match=r"half\.sqlite: Objects/TS_03: no table of tilt images"):
        scipion.read_scipion_tilt_series(missing)
    with pytest.warns(FormatWarning, match="TS_03"):
        assert len(scipion.read_scipion_tilt_series(missing, strict=False)) == 1
    text = tmp_path / "not.sqlite"
    text.write_text("hello")
    with pytest.raises(FormatError, match="not an sqlite database"):
        scipion.scipion_set_class(text)
    bare = tmp_path / "bare.sqlite"
    sqlite3.connect(bare).execute("CREATE TABLE t (a)").connection.close()
    with pytest.raises(FormatError, match="not a Scipion set file"):
        scipion.scipion_set_class(bare)


def test_coordinate_sets_go_to_the_coordinate_reader(tmp_path: Path) -> None:
    from tomoguide.compute.io.coords import ParticleTable, write_scipion_sqlite

    table = ParticleTable(tomo_name=np.array(["TS_01"] * 4), xyz_px=np.arange(12.0).reshape(4, 3) + 10,
                          pixel_size_A=10.0, angles_deg=None, score=None)
    p = write_scipion_sqlite(tmp_path / "coordinates.sqlite", table, origin="corner")
    facts = scipion.describe(p)
    assert facts["kind"] == "scipion_coordinates_sqlite" and facts["n_particles"] == 4
