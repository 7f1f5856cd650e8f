"""`tomoguide inspect` names the real kind and version of others' files (issue 17): Warp XML (UTF-8 and
UTF-16), ctfplotter defocus v2/v3, multi-column angle files, dose lists, TOM .em maps, PyTom marker files,
Scipion tilt-series sets (and other Scipion sets refused by name), RELION 5 / WarpTools particles — by
content where the first bytes say what a file is, not by extension alone.

Real files: the Warp XML (cryoet-alignment 0.2.0, MIT; bundled in tests/data) and its UTF-16 copy; the
WarpTools/RELION 5 particles of ../shared/data/relion5_warptools_particles (GPL-3.0, not bundled: that test
skips in a fresh clone). The other files are written here by their documented layouts (see the reader tests).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile

from tomoguide.cli import main
from tomoguide.compute.io.errors import FormatError
from tomoguide.inspect import describe_file

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
WARP = (SHARED if (SHARED / "warp").is_dir() else REPO / "tests" / "data") / "warp" / "pypi__cryoet-alignment-0.2.0" \
    / "00254.xml"
WARP16 = REPO / "tests" / "data" / "warp" / "derived" / "00254_utf16.xml"
WARPTOOLS = SHARED / "relion5_warptools_particles" / "warptools_test_4-tomos_10-ptcls_box-32_angpix-12.star"


def _lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


@pytest.mark.skipif(not WARP.is_file(), reason=f"Warp sample {WARP} not present")
def test_warp_xml_utf8_utf16_and_without_extension(tmp_path: Path) -> None:
    a = describe_file(WARP)
    assert a["kind"] == "warp_tilt_series_xml" and a["flavour"] == "Warp tilt-series XML (UTF-8)"
    assert a["n_tilts"] == 41 and a["dose_per_tilt_e_per_A2"] == 3.0
    b = describe_file(WARP16)
    assert b["flavour"] == "Warp tilt-series XML (UTF-16)" and b["n_tilts"] == 41
    renamed = shutil.copy(WARP16, tmp_path / "TS_01.meta")  # content, not extension
    assert describe_file(Path(renamed))["flavour"] == "Warp tilt-series XML (UTF-16)"


def test_ctfplotter_versions_angle_tables_and_dose_lists(tmp_path: Path) -> None:
    v3 = _lines(tmp_path / "TS.defocus", ["1  0 0. 0. 0  3", "1 1 -3 -3 3900 3850 45", "2 2 0 0 3910 3860 44"])
    v2 = _lines(tmp_path / "old.defocus", ["1 1 -3 -3 3900 2", "2 2 0 0 3910"])
    f3, f2 = describe_file(v3), describe_file(v2)
    assert f3["kind"] == "ctfplotter_defocus" and f3["flavour"] == "ctfplotter defocus v3" and f3["astigmatism"]
    assert f3["defocus_range_A"] == [38500.0, 39100.0]
    assert f2["flavour"] == "ctfplotter defocus v2" and f2["version"] == 2 and not f2["astigmatism"]
    raw = _lines(tmp_path / "TS.rawtlt", ["-3.0 2", "0.0 1", "3.0 3"])
    fr = describe_file(raw)
    assert fr["flavour"] == "2-column angle file" and fr["columns"] == ["tilt_deg", "acquisition_order"]
    dose = _lines(tmp_path / "TS.dose", ["3 3", "0 3", "6 3"])
    fd = describe_file(dose)
    assert fd["kind"] == "dose_list" and "TypeOfDoseFile 3" in fd["flavour"] and fd["prior_dose_max_e_per_A2"] == 6


def test_em_map_and_marker_files(tmp_path: Path) -> None:
    from tomoguide.compute.io import em, pytom

    em.write_em(tmp_path / "ribo.em", np.ones((4, 5, 6), np.float32), pixel_size_A=4.4)
    f = describe_file(tmp_path / "ribo.em")
    assert f["kind"] == "tom_em" and f["flavour"] == "TOM .em, float32, little-endian" and f["shape_xyz"] == [6, 5, 4]
    em.write_em(tmp_path / "big.em", np.ones((2, 2, 2), np.int16), byte_order="big")
    assert describe_file(tmp_path / "big.em")["flavour"] == "TOM .em, int16, big-endian"
    cube = np.zeros((2, 3, 10), np.float32)  # [marker, tilt, value]
    cube[:, :, 0] = [-3, 0, 3]
    cube[:, :, 1:3] = 100
    em.write_em(tmp_path / "markerfile.em", cube)
    fm = describe_file(tmp_path / "markerfile.em")
    assert fm["kind"] == "pytom_markers" and fm["n_markers"] == 2 and fm["n_tilts"] == 3
    txt = pytom.write_pytom_markers_txt(tmp_path / "markers.txt", [-3, 0, 3], np.full((2, 3, 2), 50.0))
    ft = describe_file(txt)  # a .txt that is neither CTFFIND nor coordinates
    assert ft["kind"] == "pytom_markers" and ft["flavour"] == "PyTom marker text" and ft["n_positions"] == 6


def _scipion(path: Path, cls: str) -> Path:
    con = sqlite3.connect(path)
    for prefix, props, cols, rows in (
        ("", {"self": cls, "_samplingRate": "2.7"}, [("_tsId", "String")], [(1, "TS_01")]),
        ("TS_01_", {"self": "TiltSeries"}, [("_tiltAngle", "Float"), ("_tsId", "String"), ("_acqOrder", "Integer")],
         [(1, -3.0, "TS_01", 2), (2, 0.0, "TS_01", 1), (3, 3.0, "TS_01", 3)]),
    ):
        con.execute(f'CREATE TABLE "{prefix}Properties" (key TEXT UNIQUE, value TEXT)')
        con.executemany(f'INSERT INTO "{prefix}Properties" VALUES (?, ?)', list(props.items()))
        con.execute(f'CREATE TABLE "{prefix}Classes" (id INTEGER PRIMARY KEY, label_property TEXT, column_name TEXT, '
                    "class_name TEXT)")
        item = "TiltSeries" if not prefix else "TiltImage"
        con.executemany(f'INSERT INTO "{prefix}Classes" (label_property, column_name, class_name) VALUES (?, ?, ?)',
                        [("self", "c00", item)] + [(lab, f"c{k:02d}", c) for k, (lab, c) in enumerate(cols, 1)])
        names = ", ".join(f"c{k:02d}" for k in range(1, len(cols) + 1))
        con.execute(f'CREATE TABLE "{prefix}Objects" (id INTEGER PRIMARY KEY, enabled INTEGER DEFAULT 1, {names})')
        con.executemany(f'INSERT INTO "{prefix}Objects" (id, {names}) VALUES ({", ".join("?" * (len(cols) + 1))})',
                        rows)
    con.commit()
    con.close()
    return path


def test_scipion_sets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = describe_file(_scipion(tmp_path / "tiltseries.sqlite", "SetOfTiltSeries"))
    assert f["kind"] == "scipion_tilt_series_sqlite" and f["flavour"] == "Scipion SetOfTiltSeries"
    assert f["tilt_series"] == {"TS_01": 3} and f["tilt_range_deg"] == [-3.0, 3.0] and f["pixel_size_A"] == [2.7]
    # content, not extension: the same database named .db
    db = Path(shutil.copy(tmp_path / "tiltseries.sqlite", tmp_path / "set.db"))
    assert describe_file(db)["flavour"] == "Scipion SetOfTiltSeries"
    ctf = _scipion(tmp_path / "ctftomoseries.sqlite", "SetOfCTFTomoSeries")
    assert main(["inspect", str(ctf)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ctftomoseries.sqlite" in err[0] and "SetOfCTFTomoSeries" in err[0] \
        and "not supported" in err[0]


def _particles(path: Path, *, general: bool, centred: bool) -> Path:
    parts = pd.DataFrame({"rlnTomoName": ["TS_01"] * 3, "rlnAngleRot": [0.0] * 3, "rlnAngleTilt": [0.0] * 3,
                          "rlnAnglePsi": [0.0] * 3, "rlnOpticsGroup": [1] * 3})
    if centred:
        for c in "XYZ":
            parts[f"rlnCenteredCoordinate{c}Angst"] = [1.0, 2.0, 3.0]
    else:
        for c in "XYZ":
            parts[f"rlnCoordinate{c}"] = [10.0, 20.0, 30.0]
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"],
                           "rlnTomoTiltSeriesPixelSize": [1.35]})
    blocks: dict[str, object] = {"general": {"rlnTomoSubTomosAre2DStacks": 1}} if general else {}
    blocks.update(optics=optics, particles=parts)
    starfile.write(blocks, path)
    return path


def test_relion_particles_versions(tmp_path: Path) -> None:
    from tomoguide.compute.io import star

    cases = {("warptools", True, False): 5, ("relion5", False, True): 5, ("relion4", False, False): 4}
    for (name, general, centred), version in cases.items():
        p = _particles(tmp_path / f"{name}.star", general=general, centred=centred)
        f = describe_file(p)
        assert f["flavour"] == f"RELION {version} particles STAR", name
        assert f["facts"]["relion_version"] == version
        assert star.read_particles_star(p).relion_version == version


@pytest.mark.skipif(not WARPTOOLS.is_file(), reason="../shared/data/relion5_warptools_particles (GPL-3.0, not bundled) "
                    "is absent")
def test_real_warptools_particles_are_relion5() -> None:
    from tomoguide.compute.io import star

    f = describe_file(WARPTOOLS)
    assert f["flavour"] == "RELION 5 particles STAR" and f["facts"]["n_particles"] == 40
    assert star.read_particles_star(WARPTOOLS).relion_version == 5


def test_cli_json_and_unknown_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    v3 = _lines(tmp_path / "a.defocus", ["1  0 0. 0. 0  3", "1 1 0 0 3900 3850 45"])
    assert main(["inspect", "--json", str(v3)]) == 0
    facts = json.loads(capsys.readouterr().out)  # one file: one object
    assert facts["flavour"] == "ctfplotter defocus v3" and facts["file"] == str(v3)
    odd = tmp_path / "thing.xyz"
    odd.write_bytes(b"\x01\x02")
    with pytest.raises(FormatError, match=r"unknown file type '\.xyz'.*Warp \.xml, TOM \.em, Scipion \.sqlite"):
        describe_file(odd)
    xml = tmp_path / "other.xml"
    xml.write_text('<?xml version="1.0"?><Settings/>')
    with pytest.raises(FormatError, match=r"root element <Settings>.*not supported"):
        describe_file(xml)
    head = bytearray(512)
    head[0], head[3] = 6, 7
    (tmp_path / "c.em").write_bytes(bytes(head))
    with pytest.raises(FormatError, match="data type: code 7 is not supported"):
        describe_file(tmp_path / "c.em")
