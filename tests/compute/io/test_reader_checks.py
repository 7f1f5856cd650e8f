"""Readers that check values, not only syntax (issue 15, item 8): every bad file is one ``FILE: FIELD: problem``.

MRC voxel sizes (0 = not recorded, never a size; NaN/inf/negative/huge refused), mdoc values within physical
bounds, duplicate keys and a lost ``[ZValue = n]`` line, files cut short (mdoc, STAR, TIFF, IMOD), STAR errors
naming block, row and line, ``inspect --json`` always valid JSON. Each check is exercised on a hand-made file
and shown not to fire on the real files other programs wrote (``../shared/data``).
"""

from __future__ import annotations

import json
import math
import struct
import warnings
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest

from tomoguide.cli import main
from tomoguide.compute.io import imod, mdoc, movies, mrc, star
from tomoguide.compute.io.errors import FormatError, FormatWarning

# ---------------------------------------------------------------------------------------------------------------
# mdoc
# ---------------------------------------------------------------------------------------------------------------

TILTS = (0.0, 3.0, -3.0, 6.0, -6.0)


def _mdoc_text(tilts: tuple[float, ...] = TILTS, *, dose: str = "3", nl: str = "\n") -> str:
    lines = ["PixelSpacing = 2.5", "Voltage = 300", "ImageFile = TS_01.mrc", "ImageSize = 80 64", "DataMode = 1", "",
             "[T = SerialEM: Digitized on EMBL Krios   27-Nov-26  10:00:00    ]", "",
             "[T =     Tilt axis angle = 85.0, binning = 1  spot = 8  camera = 0]", ""]
    for z, a in enumerate(tilts):
        lines += [f"[ZValue = {z}]", f"TiltAngle = {a:.2f}", f"ExposureDose = {dose}", "PixelSpacing = 2.5",
                  "TargetDefocus = -3", f"SubFramePath = X:\\frames\\TS_01_{z:03d}_{a:.1f}.mrc", "NumSubFrames = 4",
                  "FrameDosesAndNumber = 0.75 4", f"DateTime = 27-Nov-26  10:0{z}:00", ""]
    return nl.join(lines)


def _write(tmp_path: Path, text: str | bytes, name: str = "TS_01.mdoc") -> Path:
    p = tmp_path / name
    p.write_bytes(text.encode("latin-1") if isinstance(text, str) else text)
    return p


def test_a_clean_mdoc_has_no_problem_and_no_note(tmp_path: Path) -> None:
    m = mdoc.read_mdoc(_write(tmp_path, _mdoc_text()))
    assert [s.tilt_angle_deg for s in m.sections] == list(TILTS) and m.notes == []


@pytest.mark.parametrize("z", range(1, len(TILTS)))
def test_a_lost_zvalue_line_is_refused_naming_the_merged_section(tmp_path: Path, z: int) -> None:
    """The issue's case: ``[ZValue = z]`` lost, its keys join section z-1 (which then has two TiltAngle keys);
    read before the check as one view fewer, the 0° view dropped when z = 1."""
    text = _mdoc_text().replace(f"[ZValue = {z}]\n", "")
    p = _write(tmp_path, text)
    with pytest.raises(FormatError, match=rf"TS_01\.mdoc: \[ZValue = {z - 1}\] TiltAngle: given twice \(lines \d+ "
                                          r"and \d+\): a lost '\[ZValue = n\]' line"):
        mdoc.read_mdoc(p)
    with pytest.warns(FormatWarning, match="given twice"):
        m = mdoc.read_mdoc(p, strict=False)
    assert m.sections[z - 1].tilt_angle_deg == TILTS[z - 1]  # the section's own value is kept


def test_a_lost_first_zvalue_line_is_refused(tmp_path: Path) -> None:
    p = _write(tmp_path, _mdoc_text().replace("[ZValue = 0]\n", ""))
    with pytest.raises(FormatError, match=r"TS_01\.mdoc: line 11 TiltAngle: a section key before the first section: "
                                          r"a lost '\[ZValue = 0\]' line"):
        mdoc.read_mdoc(p)


def test_duplicated_lines_and_sections_are_refused(tmp_path: Path) -> None:
    text = _mdoc_text()
    with pytest.raises(FormatError, match=r"\[ZValue = 2\] ExposureDose: given twice"):
        mdoc.read_mdoc(_write(tmp_path, text.replace("[ZValue = 2]\nTiltAngle = -3.00\nExposureDose = 3\n",
                                                     "[ZValue = 2]\nTiltAngle = -3.00\nExposureDose = 3\n"
                                                     "ExposureDose = 3\n")))
    with pytest.raises(FormatError, match=r"line 3 Voltage: given twice \(lines 2 and 3\): a duplicated line"):
        mdoc.read_mdoc(_write(tmp_path, text.replace("Voltage = 300\n", "Voltage = 300\nVoltage = 300\n")))
    with pytest.raises(FormatError, match=r"\[ZValue = 3\]: two sections with this number \(lines \d+ and \d+\)"):
        mdoc.read_mdoc(_write(tmp_path, text.replace("[ZValue = 3]\n", "[ZValue = 3]\n[ZValue = 3]\n")))


def test_skipping_zvalues_are_a_note_not_an_error(tmp_path: Path) -> None:
    """A section removed whole (by hand) leaves numbers that skip: read, and said."""
    text = _mdoc_text()
    start = text.index("[ZValue = 2]")
    end = text.index("[ZValue = 3]")
    m = mdoc.read_mdoc(_write(tmp_path, text[:start] + text[end:]))
    assert len(m.sections) == 4 and m.notes and "skip 2" in m.notes[0]


@pytest.mark.parametrize("cut_in", ["line", "section"])
def test_an_mdoc_cut_short_says_so(tmp_path: Path, cut_in: str) -> None:
    text = _mdoc_text()
    if cut_in == "line":  # inside the last DateTime value, no line end
        cut = text.rindex("DateTime") + 20
        match = r"line \d+: the file ends in the middle of a line of \[ZValue = 4\] \(no line end\): cut short"
    else:  # at a line end inside the last section
        cut = text.rindex("NumSubFrames")
        match = r"\[ZValue = 4\]: the last section lacks DateTime, FrameDosesAndNumber, NumSubFrames"
    with pytest.raises(FormatError, match=match):
        mdoc.read_mdoc(_write(tmp_path, text[:cut]))


@pytest.mark.parametrize("key,value,match", [
    ("TiltAngle", "-2147483631", r"\[ZValue = 1\] TiltAngle: -2\.14748e\+09° is outside the physical range -90 to 90"),
    ("TiltAngle", "95", r"TiltAngle: 95° is outside"),
    ("ExposureDose", "-2147483631", r"ExposureDose: -2\.14748e\+09 e/A\^2 per tilt is outside"),
    ("ExposureDose", "1e30", r"ExposureDose: 1e\+30 e/A\^2 per tilt is outside"),
    ("ExposureDose", "nan", r"ExposureDose: not a number: 'nan'"),
    ("PixelSpacing", "-2.5", r"PixelSpacing: -2\.5 A is outside"),
    ("FrameDosesAndNumber", "0.5 -2147483648", r"FrameDosesAndNumber: number of frames -2147483648 is not a whole"),
    ("FrameDosesAndNumber", "0.75", r"FrameDosesAndNumber: '0\.75': expected pairs"),
    ("NumSubFrames", "4.5", r"NumSubFrames: not a whole number"),
    ("TargetDefocus", "inf", r"TargetDefocus: not a number: 'inf'"),
])
def test_values_outside_physical_bounds_are_refused(tmp_path: Path, key: str, value: str, match: str) -> None:
    text = _mdoc_text()
    i = text.index(f"{key} = ", text.index("[ZValue = 1]"))
    j = text.index("\n", i)
    p = _write(tmp_path, text[:i] + f"{key} = {value}" + text[j:])
    with pytest.raises(FormatError, match=r"TS_01\.mdoc: " + (r"\[ZValue = 1\] " if "ZValue" not in match else "")
                       + match):
        mdoc.read_mdoc(p)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = mdoc.read_mdoc(p, strict=False)
    assert caught
    for s in m.sections:  # what is read is within bounds
        assert s.tilt_angle_deg is None or abs(s.tilt_angle_deg) <= 90
        assert s.exposure_dose_e_A2 is None or 0 <= s.exposure_dose_e_A2 < 1000
        assert s.pixel_spacing_A is None or s.pixel_spacing_A > 0
        assert s.frame_dose_total_e_A2 is None or 0 <= s.frame_dose_total_e_A2 < 1000


def test_a_total_dose_of_minus_two_billion_is_not_read(tmp_path: Path) -> None:
    """The issue's figure: −2,147,483,631 e⁻/Å² accepted as the total dose by inspect."""
    p = _write(tmp_path, _mdoc_text(dose="-2147483631"))
    assert main(["inspect", str(p)]) == 2
    facts = mdoc.describe(p)
    assert facts["problems"] and "ExposureDose: -2.14748e+09" in facts["problems"][0]
    assert facts["total_dose_e_A2"] == 15.0  # what is read instead: FrameDosesAndNumber (0.75 x 4 per tilt)


def test_global_values_and_the_tilt_axis_are_checked(tmp_path: Path) -> None:
    text = _mdoc_text()
    with pytest.raises(FormatError, match=r"TS_01\.mdoc: Voltage: -300 kV is outside"):
        mdoc.read_mdoc(_write(tmp_path, text.replace("Voltage = 300", "Voltage = -300")))
    with pytest.raises(FormatError, match=r"TS_01\.mdoc: ImageSize: '80': expected two positive whole numbers"):
        mdoc.read_mdoc(_write(tmp_path, text.replace("ImageSize = 80 64", "ImageSize = 80")))
    with pytest.raises(FormatError, match=r"Tilt axis angle: 1e\+06° is outside"):
        mdoc.read_mdoc(_write(tmp_path, text.replace("angle = 85.0", "angle = 1e6")))
    m = mdoc.read_mdoc(_write(tmp_path, text.replace("PixelSpacing = 2.5", "PixelSpacing = 0")))
    assert m.pixel_spacing_A is None and all(s.pixel_spacing_A is None for s in m.sections)  # 0: not recorded


@pytest.mark.parametrize("encoding", ["utf-16", "utf-8-sig"])
def test_utf16_and_utf8_with_bom_read_the_same(tmp_path: Path, encoding: str) -> None:
    text = _mdoc_text(nl="\r\n")
    ref = mdoc.read_mdoc(_write(tmp_path, text, "a.mdoc"))
    m = mdoc.read_mdoc(_write(tmp_path, text.encode(encoding), "b.mdoc"))
    assert [s.raw for s in m.sections] == [s.raw for s in ref.sections] and m.tilt_axis_deg == 85.0


def test_nul_bytes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match=r"TS_01\.mdoc: line 1: NUL bytes"):
        mdoc.read_mdoc(_write(tmp_path, _mdoc_text().encode("utf-16-le")))


def test_movies_the_mdoc_does_not_list_are_noted(tmp_path: Path) -> None:
    """A section count that disagrees with the movies present: the file cut after a complete section reads as a
    shorter series, and describe() says which movies no section names."""
    text = _mdoc_text()
    for z, a in enumerate(TILTS):
        (tmp_path / f"TS_01_{z:03d}_{a:.1f}.mrc").write_bytes(b"")
    p = _write(tmp_path, text[:text.index("[ZValue = 4]")])
    facts = mdoc.describe(p)
    assert facts["n_tilts"] == 4
    assert any("TS_01_004_-6.0.mrc" in n and "not in the mdoc" in n for n in facts["notes"])


def test_real_mdocs_pass_every_check(shared_data: Path) -> None:
    for p in sorted((shared_data / "mdoc").rglob("*.mdoc")):
        m = mdoc.read_mdoc(p)
        assert m.notes == [], (p, m.notes)


# ---------------------------------------------------------------------------------------------------------------
# MRC
# ---------------------------------------------------------------------------------------------------------------


def _mrc(tmp_path: Path, *, cella: float | None = None, m: int | None = None, axis: int = 0) -> Path:
    p = tmp_path / "map.mrc"
    mrc.write_mrc(p, np.arange(4 * 6 * 8, dtype=np.float32).reshape(4, 6, 8), 2.0)
    b = bytearray(p.read_bytes())
    if cella is not None:
        b[40 + 4 * axis:44 + 4 * axis] = struct.pack("<f", cella)
    if m is not None:
        b[28 + 4 * axis:32 + 4 * axis] = struct.pack("<i", m)
    p.write_bytes(bytes(b))
    return p


@pytest.mark.parametrize("cella,axis,field", [(math.nan, 0, "cella.x"), (math.inf, 1, "cella.y"),
                                               (-16.0, 2, "cella.z"), (1e30, 0, "cella.x"), (1e-30, 1, "cella.y")])
def test_a_voxel_size_that_cannot_be_one_is_refused(tmp_path: Path, cella: float, axis: int, field: str) -> None:
    p = _mrc(tmp_path, cella=cella, axis=axis)
    with pytest.raises(FormatError, match=rf"map\.mrc: {field}: "):
        mrc.read_header(p)
    with pytest.raises(FormatError, match=rf"map\.mrc: {field}: "):
        mrc.read_mrc(p)
    with pytest.warns(FormatWarning, match=field):
        info = mrc.read_header(p, strict=False)
    assert info.voxel_size_A[axis] == 0.0  # read as "not recorded", never as a size
    assert main(["inspect", str(p)]) == 2


def test_a_sampling_of_zero_is_refused(tmp_path: Path) -> None:
    """``mx`` 0 made mrcfile's voxel size infinite."""
    with pytest.raises(FormatError, match=r"map\.mrc: mx: sampling 0: must be positive"):
        mrc.read_header(_mrc(tmp_path, m=0))


def test_voxel_size_zero_is_not_recorded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = _mrc(tmp_path, cella=0.0, axis=0)
    assert mrc.read_header(p).voxel_size_A == (0.0, 2.0, 2.0)
    assert main(["inspect", "--json", str(p)]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["voxel_size_A"] == [0.0, 2.0, 2.0] and "not recorded along x" in facts["notes"][0]
    p = _mrc(tmp_path, cella=0.0, axis=0)
    for a in (1, 2):
        b = bytearray(p.read_bytes())
        b[40 + 4 * a:44 + 4 * a] = struct.pack("<f", 0.0)
        p.write_bytes(bytes(b))
    assert mrc.describe(p)["voxel_size_A"] is None


def test_header_and_data_consistency(tmp_path: Path) -> None:
    p = _mrc(tmp_path)
    data = p.read_bytes()
    (tmp_path / "short.mrc").write_bytes(data[:-5])
    with pytest.raises(FormatError, match=r"short\.mrc: data: file is truncated"):
        mrc.read_mrc(tmp_path / "short.mrc")
    b = bytearray(data)
    b[0:4] = struct.pack("<i", 7)  # nx 8 -> 7: the rows would read sheared
    (tmp_path / "nx.mrc").write_bytes(bytes(b))
    with pytest.raises(FormatError, match=r"nx\.mrc: data: the file holds 96 bytes more than the header's 4 sections "
                                          r"of 6x7 float32 \(672 bytes\): a wrong size"):
        mrc.read_header(tmp_path / "nx.mrc")
    b = bytearray(data)
    b[12:16] = struct.pack("<i", 3)
    (tmp_path / "mode.mrc").write_bytes(bytes(b))
    with pytest.raises(FormatError, match=r"mode\.mrc: mode: unknown MRC mode 3"):
        mrc.read_header(tmp_path / "mode.mrc")


def test_real_maps_keep_their_voxel_sizes(shared_data: Path) -> None:
    assert mrc.read_header(shared_data / "maps" / "EMD-3197.map").voxel_size_A == (11.4, 11.4, 11.4) \
        if (shared_data / "maps" / "EMD-3197.map").exists() else True
    for p in sorted((shared_data / "maps").glob("*")) + sorted((shared_data / "tilt_series").glob("*")):
        if p.suffix.lower() in (".mrc", ".map", ".st", ".mrcs"):
            info = mrc.read_header(p)
            assert all(v == 0 or 0.01 <= v <= 1e5 for v in info.voxel_size_A), (p, info.voxel_size_A)


# ---------------------------------------------------------------------------------------------------------------
# STAR
# ---------------------------------------------------------------------------------------------------------------


def _particles(tmp_path: Path) -> Path:
    p = tmp_path / "particles.star"
    parts = pd.DataFrame({"rlnTomoName": ["TS_01"] * 4, "rlnCenteredCoordinateXAngst": [1.0, 2.0, 3.0, 4.0],
                          "rlnCenteredCoordinateYAngst": [5.0, 6.0, 7.0, 8.0],
                          "rlnCenteredCoordinateZAngst": [9.0, 10.0, 11.0, 12.0]})
    star.write_particles_star(p, parts, {"rlnTomoTiltSeriesPixelSize": 2.0})
    return p


def test_a_star_row_with_a_value_missing_names_block_row_and_line(tmp_path: Path) -> None:
    p = _particles(tmp_path)
    lines = p.read_text().splitlines(keepends=True)
    i = next(i for i, ln in enumerate(lines) if ln.startswith("TS_01") and "\t3.0" in ln)
    lines[i] = lines[i].replace("\t7.0", "", 1)
    p.write_text("".join(lines))
    with pytest.raises(FormatError, match=rf"particles\.star: data_particles row 3 \(line {i + 1}\): 4 values for "
                                          r"5 columns$"):
        star.read_star(p)


@pytest.mark.parametrize("where", ["row", "label", "line end"])
def test_a_star_file_cut_short_says_so(tmp_path: Path, where: str) -> None:
    text = _particles(tmp_path).read_text()
    if where == "row":  # inside the last row: fewer values
        cut = text.rstrip().rindex("\t") - 3
        match = r"data_particles row 4 \(line \d+\): [34] values for 5 columns \(the file ends here: cut short\?\)"
    elif where == "label":
        cut = text.index("_rlnCenteredCoordinateY") + 10
        match = r"data_particles line \d+: the file ends in the middle of this line"
    else:  # no line end after the last row: its last value may be cut
        cut = len(text.rstrip())
        match = r"data_particles row 4 \(line \d+\): the file ends in the middle of this row"
    p = tmp_path / "cut.star"
    p.write_text(text[:cut])
    with pytest.raises(FormatError, match=r"cut\.star: " + match):
        star.read_star(p)
    assert main(["inspect", str(p)]) == 2


def test_text_in_a_column_of_numbers_names_the_row(tmp_path: Path) -> None:
    p = _particles(tmp_path)
    p.write_text(p.read_text().replace("\t6.000000", "\tabc", 1))
    with pytest.raises(FormatError, match=r"data_particles row 2 \(line \d+\) rlnCenteredCoordinateYAngst: not a "
                                          r"number: 'abc' \(the column's other values are numbers\)"):
        star.read_star(p)


def test_non_finite_coordinates_and_pixel_sizes_are_refused(tmp_path: Path) -> None:
    p = _particles(tmp_path)
    p.write_text(p.read_text().replace("\t10.000000", "\tnan", 1))
    star.read_star(p)  # NaN is a number to the STAR syntax ...
    with pytest.raises(FormatError, match=r"data_particles row 2 \(line \d+\) rlnCenteredCoordinateZAngst: nan: "
                                          r"must be a finite number \(1 such row\)"):
        star.read_particles_star(p)  # ... not to a coordinate
    p = _particles(tmp_path)
    p.write_text(p.read_text().replace("\t2.000000", "\t-2.000000", 1))
    with pytest.raises(FormatError, match=r"data_optics row 1 \(line \d+\) rlnTomoTiltSeriesPixelSize"):
        star.read_particles_star(p)


def test_utf16_star_is_refused_in_one_line(tmp_path: Path) -> None:
    p = _particles(tmp_path)
    p.write_bytes(p.read_text().encode("utf-16"))
    with pytest.raises(FormatError, match=r"particles\.star: encoding: UTF-16 text"):
        star.read_star(p)


def test_a_star_file_replaced_after_a_failed_read_is_read_again(tmp_path: Path) -> None:
    """starfile keeps a file's lines in ``linecache`` after a failed parse: the same path was then read from that
    stale cache ever after, even once repaired (found by the fuzzer: one broken file made a later, sound one at the
    same path fail)."""
    p = _particles(tmp_path)
    good = p.read_bytes()
    lines = good.decode().splitlines(keepends=True)
    broken = "".join(lines[:-2] + ["TS_01\t1\t2\t3\t4\t5\t6\n"] + lines[-1:])
    p.write_text(broken)
    with pytest.raises(FormatError):
        star.read_star(p)
    p.write_bytes(good)
    assert len(star.read_star(p)["particles"]) == 4


def test_real_star_files_pass_every_check(shared_data: Path) -> None:
    for p in sorted(shared_data.rglob("*.star")):
        with warnings.catch_warnings():
            warnings.simplefilter("error", FormatWarning)
            star.read_star(p)


def test_inspect_json_is_valid_json_with_non_finite_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``inspect --json`` printed bare NaN (invalid JSON); a value that is not a finite number is null."""
    p = tmp_path / "TS_01.star"
    tilts = pd.DataFrame({"rlnMicrographMovieName": ["a.mrc", "b.mrc"], "rlnTomoNominalStageTiltAngle": [0.0, 3.0],
                          "rlnTomoNominalTiltAxisAngle": [math.nan, math.nan]})
    star.write_tilt_series_star(p, tilts, tomo_name="TS_01")
    assert main(["inspect", "--json", "--permissive", str(p)]) == 0
    out = capsys.readouterr().out

    def refuse(x: str) -> None:
        raise ValueError(x)

    facts = json.loads(out, parse_constant=refuse)
    assert facts["facts"]["tilt_axis_deg"] is None


# ---------------------------------------------------------------------------------------------------------------
# TIFF and IMOD
# ---------------------------------------------------------------------------------------------------------------


def _tiff(tmp_path: Path) -> Path:
    p = tmp_path / "movie.tif"
    movies.write_movie_tiff(p, np.random.default_rng(0).poisson(2, (3, 32, 40)).astype(np.uint8), compression=None)
    return p


def test_a_tiff_cut_short_is_refused(tmp_path: Path) -> None:
    p = _tiff(tmp_path)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) - 700])
    for read in (movies.read_movie, movies.read_movie_sum, movies.read_movie_header, movies.read_gain):
        with pytest.raises(FormatError, match=r"movie\.tif: page \d+: (its image data end at byte \d+ but the file "
                                              r"has \d+ bytes|the image directory at byte \d+ cannot be read "
                                              r"\(the file has \d+ bytes\)): the file is cut short"):
            read(p)


def test_a_damaged_tiff_directory_is_one_line_without_python_names(tmp_path: Path) -> None:
    p = _tiff(tmp_path)
    b = bytearray(p.read_bytes())
    b[4:8] = struct.pack("<I", len(b) + 1000)  # first image directory beyond the end
    p.write_bytes(bytes(b))
    with pytest.raises(FormatError) as err:
        movies.read_movie(p)
    text = str(err.value)
    assert text.startswith(f"{p}: TIFF: ") and "Error" not in text and "\n" not in text


def test_imod_angles_cut_short_or_out_of_bounds(tmp_path: Path) -> None:
    p = tmp_path / "TS_01.tlt"
    p.write_text("-30.00\n-20.00\n-1")
    with pytest.raises(FormatError, match=r"TS_01\.tlt: line 3: the file ends in the middle of a line"):
        imod.read_tlt(p)
    p.write_text("-30.00\n-200.00\n")
    with pytest.raises(FormatError, match=r"TS_01\.tlt: value 2: tilt angle -200° is outside ±90°"):
        imod.read_tlt(p)
    p.write_text("")
    with pytest.raises(FormatError, match=r"TS_01\.tlt: values: no tilt angle values found"):
        imod.read_tlt(p)


def test_mrcfile_agrees_on_a_sound_header(tmp_path: Path) -> None:
    p = _mrc(tmp_path)
    with mrcfile.open(p, permissive=True, header_only=True) as m:
        assert tuple(float(v) for v in (m.voxel_size.x, m.voxel_size.y, m.voxel_size.z)) == mrc.read_header(p).voxel_size_A
