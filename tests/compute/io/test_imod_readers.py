"""IMOD readers for others' files (issue 17): multi-column angle files, dose lists, ctfplotter defocus files
(versions 1-3) and exclude lists of .com files.

No real ctfplotter ``.defocus`` file with a permissive licence was found (IMOD's own are GPL); the defocus
files here are written by the layout of IMOD's ctfphaseflip man page, from the real CTFFIND4 estimates of
EMPIAR-10164 TS_01 in RELION's CtfFind STAR (tests/data/ctf/alisterburt__tomo_preprocessing, BSD-3-Clause,
https://github.com/alisterburt/tomo_preprocessing), the way converters write them (``1  0 0. 0. 0  3``
header; defocus in nm); reading them back must give the STAR's values (a second source of the same
numbers).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tomoguide.compute.io import imod, star
from tomoguide.compute.io.errors import FormatError, FormatWarning

REPO = Path(__file__).resolve().parents[3]
SHARED = REPO.parent / "shared" / "data"
DATA = SHARED if SHARED.is_dir() else REPO / "tests" / "data"
CTF_STAR = DATA / "ctf" / "alisterburt__tomo_preprocessing" / "test_data" / "ctffind" / "relion_ctf_estimation_output.star"
HAADF = DATA / "imod" / "pypi__etspy-1.3.0" / "HAADF.rawtlt"
needs_star = pytest.mark.skipif(not CTF_STAR.is_file(), reason=f"real CTFFIND STAR {CTF_STAR} not present")


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


# ------------------------------------------------------------------------------------------ angle tables


@pytest.mark.skipif(not HAADF.is_file(), reason=f"{HAADF} not present")
def test_read_rawtlt_one_column_real_file() -> None:
    np.testing.assert_allclose(imod.read_rawtlt(HAADF), np.arange(-76, 77, 2.0))
    assert list(imod.read_tilt_table(HAADF)) == ["tilt_deg"]


def test_read_rawtlt_multi_column(tmp_path: Path) -> None:
    # AreTomo's -AngFile layout: angle, 1-based acquisition index (dose-symmetric from 0°), and a third column
    angles = np.arange(-6, 7, 3.0)
    order = np.array([5, 3, 1, 2, 4])
    dose = (order - 1) * 3.0
    p = _write(tmp_path / "ts.rawtlt", [f"{a:7.2f} {o:d} {d:5.1f}" for a, o, d in zip(angles, order, dose)])
    np.testing.assert_array_equal(imod.read_rawtlt(p), angles)
    table = imod.read_tilt_table(p)
    assert set(table) == {"tilt_deg", "acquisition_order", "column_3"}
    np.testing.assert_array_equal(table["acquisition_order"], order - 1)
    np.testing.assert_array_equal(table["column_3"], dose)
    # the one-column reader of old refuses it, the new one reads it: describe reports the columns
    with pytest.raises(FormatError, match="line 1"):
        imod.read_tlt(p)
    facts = imod.describe(p)
    assert facts["n_views"] == 5 and facts["columns"] == ["tilt_deg", "acquisition_order", "column_3"]


def test_read_rawtlt_errors_name_file_and_line(tmp_path: Path) -> None:
    p = _write(tmp_path / "a.tlt", ["-3 1", "0", "3 2"])
    with pytest.raises(FormatError, match=r"a\.tlt: line 2: expected 2 number"):
        imod.read_rawtlt(p)
    with pytest.warns(FormatWarning, match="line 2"):
        assert imod.read_rawtlt(p, strict=False).tolist() == [-3.0, 3.0]
    with pytest.raises(FormatError, match="outside"):
        imod.read_rawtlt(_write(tmp_path / "b.tlt", ["-95 1", "0 2"]))
    with pytest.raises(FormatError, match="no tilt angle values"):
        imod.read_rawtlt(_write(tmp_path / "c.tlt", ["# only a comment"]))


# -------------------------------------------------------------------------------------------- dose lists


def test_read_dose_list_conventions(tmp_path: Path) -> None:
    one = _write(tmp_path / "d1.txt", ["3.0", "3.1", "2.9"])
    d = imod.read_dose_list(one)
    assert np.isnan(d[:, 0]).all() and d[:, 1].tolist() == [3.0, 3.1, 2.9]
    d = imod.read_dose_list(one, one_column="prior")
    assert d[:, 0].tolist() == [3.0, 3.1, 2.9] and np.isnan(d[:, 1]).all()
    two = _write(tmp_path / "d2.dose", ["6 3", "0 3", "3 3"])  # IMOD TypeOfDoseFile 3: prior, dose
    np.testing.assert_array_equal(imod.read_dose_list(two), [[6, 3], [0, 3], [3, 3]])
    with pytest.raises(FormatError, match="3 numbers per line"):
        imod.read_dose_list(_write(tmp_path / "d3.txt", ["1 2 3"]))
    with pytest.raises(FormatError, match=r"d4\.txt: view 2: negative dose"):
        imod.read_dose_list(_write(tmp_path / "d4.txt", ["1", "-2"]))
    with pytest.raises(ValueError, match="one_column"):
        imod.read_dose_list(one, one_column="total")


# ------------------------------------------------------------------------------------------ defocus files


def _relion_ctf() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    df = star.read_star(CTF_STAR)["micrographs"]
    return (df["rlnDefocusU"].to_numpy(float), df["rlnDefocusV"].to_numpy(float),
            df["rlnDefocusAngle"].to_numpy(float))


@needs_star
def test_ctfplotter_v3_astigmatism_matches_the_ctffind_estimates(tmp_path: Path) -> None:
    u, v, ang = _relion_ctf()
    tilts = np.linspace(-60, 60, u.size)
    lines = ["1  0 0. 0. 0  3"] + [
        f"{i + 1}\t{i + 1}\t{t:.2f}\t{t:.2f}\t{du / 10:.1f}\t{dv / 10:.1f}\t{a:.2f}"
        for i, (t, du, dv, a) in enumerate(zip(tilts, u, v, ang))]
    d = imod.read_ctfplotter_defocus(_write(tmp_path / "TS_01.defocus", lines))
    assert d.version == 3 and d.flags == 1 and d.has_astigmatism and not d.tilts_inverted
    np.testing.assert_array_equal(d.views, np.arange(u.size))
    np.testing.assert_allclose(d.defocus_u_A, u, atol=0.5)  # nm with one decimal -> within 0.5 Å
    np.testing.assert_allclose(d.defocus_v_A, v, atol=0.5)
    np.testing.assert_allclose(d.astigmatism_angle_deg, ang, atol=0.005)
    assert d.defocus_u_A[0] == pytest.approx(39224.3, abs=0.5)  # the README's first tilt
    per = d.per_view(u.size + 2)
    assert np.isnan(per["defocus_u_A"][-2:]).all() and per["defocus_v_A"][0] == pytest.approx(39029.8, abs=0.5)
    facts = imod.describe(d.path)
    assert facts["flavour"] == "ctfplotter defocus v3" and facts["n_views"] == u.size


def test_ctfplotter_v2_and_v1(tmp_path: Path) -> None:
    # version 2: first line ends with the version number 2; ranges of views; no astigmatism
    v2 = _write(tmp_path / "v2.defocus", ["1\t3\t-60.00\t-54.00\t3980\t2", "4\t4\t-51.00\t-51.00\t3990",
                                          "5\t9\t-48.00\t-36.00\t4010"])
    d = imod.read_ctfplotter_defocus(v2)
    assert d.version == 2 and d.flags == 0 and not d.has_astigmatism
    np.testing.assert_array_equal(d.views, np.arange(9))
    np.testing.assert_array_equal(d.defocus_u_A, [39800] * 3 + [39900] + [40100] * 5)
    np.testing.assert_array_equal(d.defocus_v_A, d.defocus_u_A)
    np.testing.assert_array_equal(d.astigmatism_angle_deg, 0.0)
    np.testing.assert_array_equal(d.ranges, [[0, 2], [3, 3], [4, 8]])
    d1 = imod.read_ctfplotter_defocus(_write(tmp_path / "v1.defocus", ["2 2 -3 -3 5000", "3 3 0 0 5100"]))
    assert d1.version == 1 and d1.views.tolist() == [1, 2] and d1.defocus_u_A.tolist() == [50000, 51000]
    assert imod.describe(v2)["flavour"] == "ctfplotter defocus v2"


def test_ctfplotter_v3_flag_0_and_phase_cut_on_without_astigmatism(tmp_path: Path) -> None:
    d = imod.read_ctfplotter_defocus(_write(tmp_path / "z.defocus", ["0 0 0.0 0.0 0.0 3", "1 1 -60 -60 7000",
                                                                     "20 20 0.0 0.0 7100"]))
    # the 0° line (zeros in the tilt columns, a defocus) is data, not a header; views 2-19 are in no range
    assert d.version == 3 and d.flags == 0 and d.views.tolist() == [0, 19]
    assert d.defocus_u_A.tolist() == [70000.0, 71000.0]
    assert np.isnan(d.per_view(20)["defocus_u_A"][1:19]).all()
    # flag 36 (phase + cut-on): 7 columns that must not be read as astigmatism
    e = imod.read_ctfplotter_defocus(_write(tmp_path / "p.defocus", ["36 0 0.0 0.0 0.0 3", "1 1 -50 -50 7000 180 0.17"]))
    assert e.defocus_v_A.tolist() == [70000.0] and e.astigmatism_angle_deg.tolist() == [0.0]
    assert e.phase_shift_deg.tolist() == [180.0] and e.cut_on_frequency.tolist() == [0.17]


def test_ctfplotter_overlapping_ranges_take_the_nearest_centre(tmp_path: Path) -> None:
    p = _write(tmp_path / "o.defocus", ["1\t5\t-6\t6\t3000\t2", "4\t8\t3\t15\t4000"])
    d = imod.read_ctfplotter_defocus(p)
    # view 4 (1-based): centre 3 of range 1-5 is 1 away, centre 6 of 4-8 is 2 away; view 5: 2 vs 1
    np.testing.assert_array_equal(d.defocus_u_A, [30000, 30000, 30000, 30000, 40000, 40000, 40000, 40000])


def test_ctfplotter_v3_flags_radians_phase_cut_on(tmp_path: Path) -> None:
    # flags 1 + 2 + 4 + 8 + 16 + 32: astigmatism (radians), phase (radians), inverted tilts, cut-on
    p = _write(tmp_path / "f.defocus", ["63  0 0. 0. 0  3",
                                        f"1 1 -3 -3 3000 2900 {np.pi / 4:.6f} {np.pi / 2:.6f} 0.05",
                                        f"2 2 0 0 3100 3050 {-np.pi / 6:.6f} {np.pi / 3:.6f} 0.04"])
    d = imod.read_ctfplotter_defocus(p)
    assert d.flags == 63 and d.tilts_inverted
    np.testing.assert_allclose(d.astigmatism_angle_deg, [45, -30], atol=1e-4)
    np.testing.assert_allclose(d.phase_shift_deg, [90, 60], atol=1e-4)
    np.testing.assert_allclose(d.cut_on_frequency, [0.05, 0.04])
    np.testing.assert_array_equal(d.defocus_v_A, [29000, 30500])
    # phase in degrees (flag 4 without 8), no astigmatism: 6 columns
    q = _write(tmp_path / "g.defocus", ["4  0 0. 0. 0  3", "1 1 0 0 3000 45"])
    e = imod.read_ctfplotter_defocus(q)
    assert e.phase_shift_deg.tolist() == [45.0] and e.defocus_v_A.tolist() == [30000.0]


@pytest.mark.parametrize(
    ("lines", "match"),
    [
        (["1  0 0. 0. 0  3", "1 1 0 0 3000"], r"line 2: expected 7 numbers for a version-3 defocus line with flags 1"),
        (["1  0 0. 0. 0  3"], "no defocus lines"),
        (["1 1 0 0 3000 4"], "version 4 after the first line"),
        (["0 0 0 0 3000"], r"line 1: view range 0-0"),
        (["3 2 0 0 3000"], r"line 1: view range 3-2"),
        (["1 1 0 0 -3000"], "underfocus as positive nm"),
        (["64  0 0. 0. 0  3", "1 1 0 0 3000"], "flags 64"),
        (["1 1 0 0 3000 x"], "line 1: expected numbers"),
        # astigmatism columns without the version-3 header that announces them
        (["1 1 -60 -60 3665 3472 -62", "2 2 -57 -57 3600 3400 -61"], "line 1: expected 5 numbers .* got 7 .*version-3 header"),
        # IMOD < 4.1 numbered views from 0 (off by one): refused, not shifted silently
        (["0 0 -60 -60 7000", "1 1 -57 -57 7100"], r"line 1: view range 0-0"),
    ],
)
def test_ctfplotter_refusals_name_file_and_line(tmp_path: Path, lines: list[str], match: str) -> None:
    p = _write(tmp_path / "bad.defocus", lines)
    with pytest.raises(FormatError, match=match) as err:
        imod.read_ctfplotter_defocus(p)
    assert str(err.value).startswith(str(p))


def test_ctfplotter_truncated_and_binary(tmp_path: Path) -> None:
    p = tmp_path / "cut.defocus"
    p.write_text("1  0 0. 0. 0  3\n1 1 -3 -3 3000 2900 45\n2 2 0 0 31")
    with pytest.raises(FormatError, match="ends in the middle of a line"):
        imod.read_ctfplotter_defocus(p)
    b = tmp_path / "bin.defocus"
    b.write_bytes(b"\x00\xff\xfe" * 10)
    with pytest.raises(FormatError, match="not a text defocus file"):
        imod.read_ctfplotter_defocus(b)
    v = _write(tmp_path / "views.defocus", ["1 1 0 0 3000 2", "7 7 3 3 3000"])
    with pytest.raises(FormatError, match="view 7 is beyond the 5 views"):
        imod.read_ctfplotter_defocus(v).per_view(5)


# ----------------------------------------------------------------------------------------- exclude lists


def test_read_exclude_list(tmp_path: Path) -> None:
    tilt = _write(tmp_path / "tilt.com", ["$tilt -StandardInput", "THICKNESS 300", "EXCLUDELIST 1-3,40",
                                          "EXCLUDELIST2 41"])
    assert imod.read_exclude_list(tilt) == [0, 1, 2, 39, 40]
    align = _write(tmp_path / "align.com", ["$tiltalign -StandardInput", "ExcludeList 2,5-6"])
    assert imod.read_exclude_list(align) == [1, 4, 5]
    assert imod.describe(align)["excluded_views_1based"] == [2, 5, 6]
    assert imod.read_exclude_list(_write(tmp_path / "newst.com", ["$newstack -StandardInput",
                                                                  "BinByFactor 2"])) == []
    with pytest.raises(FormatError, match=r"tilt2\.com: EXCLUDELIST: .*descending"):
        imod.read_exclude_list(_write(tmp_path / "tilt2.com", ["EXCLUDELIST 5-3"]))


@pytest.mark.skipif(not (DATA / "imod" / "pypi__cryoet-alignment-0.2.0" / "tilt.com").is_file(),
                    reason="real tilt.com not present")
def test_read_exclude_list_real_com_without_one() -> None:
    assert imod.read_exclude_list(DATA / "imod" / "pypi__cryoet-alignment-0.2.0" / "tilt.com") == []
