"""SerialEM mdoc reader/writer: real files from five labs, per-tilt records, errors, round trips."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from mdocfile.data_models import Mdoc as MdocfileMdoc

from tomoguide.compute.io import mdoc as md
from tomoguide.compute.io import mrc
from tomoguide.compute.io.errors import FormatError, FormatWarning

TS01_LF = "mdoc/teamtomo__mdocfile/tests/test_data/tilt_series.mdoc"
TS01_CRLF = "mdoc/alisterburt__tomo_preprocessing/test_data/mdoc/TS_01.mrc.mdoc"
L1_TS = "mdoc/czimaginginstitute__AreTomo3/Mdoc/L1_ts_001.mrc.mdoc"
FRAME_SINGLE = "mdoc/teamtomo__mdocfile/tests/test_data/frame_set_single.mdoc"
FRAME_MULTI = "mdoc/teamtomo__mdocfile/tests/test_data/frame_set_multiple.mdoc"
MONTAGE = "mdoc/teamtomo__mdocfile/tests/test_data/montage_section.mdoc"
MONTAGE_MULTI = "mdoc/teamtomo__mdocfile/tests/test_data/montage_section_multiple.mdoc"


def _all_mdocs(root: Path) -> list[Path]:
    files = sorted((root / "mdoc").rglob("*.mdoc"))
    assert len(files) >= 11
    return files


def _mdocfile_sections(path: Path) -> list:  # the reference parser; it logs (not warns) about extra keys
    logging.getLogger("mdocfile").setLevel(logging.ERROR)
    return MdocfileMdoc.from_file(str(path)).section_data


# --- TS_01 (EMPIAR-10164) -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", [TS01_LF, TS01_CRLF])
def test_ts01_facts(shared_data: Path, name: str) -> None:
    m = md.read_mdoc(shared_data / name)
    assert m.kind == "tilt_series" and len(m.sections) == 41
    assert m.tilt_axis_deg == 85.3
    assert m.pixel_spacing_A == 5.4 and all(s.pixel_spacing_A == 5.4 for s in m.sections)
    assert all(s.binning == 4 for s in m.sections)  # 5.4 Å at binning 4 = 1.35 Å unbinned
    tilts = np.array([s.tilt_angle_deg for s in m.sections])
    np.testing.assert_allclose(np.sort(tilts), np.arange(-60, 61, 3), atol=0.01)
    assert all(s.target_defocus_um == 4.0 for s in m.sections)  # TargetDefocus = -4 -> 4 µm underfocus
    assert m.sections[0].sub_frame_path == r"D:\DATA\Flo\HGK149_20151130\frames\TS_01_000_0.0.mrc"
    assert m.sections[0].datetime == datetime(2015, 11, 30, 15, 21, 38)
    assert m.title_lines[1].startswith("Tilt axis angle = 85.3")

    recs = md.tilt_records(m, dose_per_tilt_e_A2=3.0)
    order = np.array([r.acquisition_order for r in recs])
    assert sorted(order) == list(range(41))
    by_time = sorted(recs, key=lambda r: r.datetime)
    assert [r.acquisition_order for r in by_time] == list(range(41))
    in_order = np.array([r.tilt_angle_deg for r in by_time])
    # dose-symmetric (Hagen, group size 1): |tilt| never decreases, and the side alternates
    assert abs(in_order[0]) < 0.01
    assert np.all(np.diff(np.round(np.abs(in_order))) >= 0)
    assert np.count_nonzero(np.diff(np.sign(in_order[1:]))) >= 19
    for r in recs:
        assert r.dose_e_A2 == 3.0
        assert r.prior_dose_e_A2 == pytest.approx(3.0 * r.acquisition_order)
    assert max(r.prior_dose_e_A2 for r in recs) == pytest.approx(120.0)

    d = md.describe(shared_data / name, dose_per_tilt_e_A2=3.0)
    json.dumps(d)
    assert d["n_tilts"] == 41 and d["tilt_step_deg"] == 3.0 and d["tilt_axis_deg"] == 85.3
    assert d["tilt_range_deg"] == pytest.approx([-60, 60], abs=0.01)
    assert d["acquisition"]["scheme"] == "dose-symmetric" and d["acquisition"]["order_source"] == "DateTime"
    assert d["dose_per_tilt_e_A2"] == 3.0 and d["total_dose_e_A2"] == pytest.approx(123.0)
    assert d["movies"]["missing"] == 41 and d["movies"]["missing_names"][-1] == "TS_01_040_60.0.mrc"
    assert d["problems"] == []


def test_crlf_copy_reads_identically(shared_data: Path) -> None:
    assert b"\r\n" in (shared_data / TS01_CRLF).read_bytes()
    a, b = md.read_mdoc(shared_data / TS01_LF), md.read_mdoc(shared_data / TS01_CRLF)
    assert a.title_lines == b.title_lines and a.global_fields == b.global_fields
    assert a.sections == b.sections


def test_ts01_without_dose_is_an_error(shared_data: Path) -> None:
    m = md.read_mdoc(shared_data / TS01_LF)  # ExposureDose = 0 in every section
    with pytest.raises(FormatError, match=r"tilt_series\.mdoc: \[ZValue = 0\] ExposureDose: missing or 0"):
        md.tilt_records(m)
    with pytest.warns(FormatWarning, match="ExposureDose"):
        recs = md.tilt_records(m, strict=False, initial_dose_e_A2=5.0)
    assert all(r.dose_e_A2 == 0.0 and r.prior_dose_e_A2 == 5.0 for r in recs)
    # describe reports it as a note (a fact about the file), not as a format problem
    d = md.describe(shared_data / TS01_LF)
    assert d["problems"] == [] and d["dose_per_tilt_e_A2"] is None and d["total_dose_e_A2"] is None
    assert d["notes"] == ["ExposureDose is 0 or missing in 41 of 41 sections: give the dose per tilt when importing"]


def _hagen(max_deg: float, step: float, group: int) -> list[float]:
    """Dose-symmetric order (Hagen et al. 2017): 0, then groups of ``group`` tilts alternating sides."""
    n = int(round(max_deg / step))
    pos = [step * k for k in range(1, n + 1)]
    out, side = [0.0], 1
    for start in range(0, n, group):
        for s in (side, -side):
            out += [s * t for t in pos[start : start + group]]
        side = -side
    return out


def test_classify_scheme() -> None:
    for group in (1, 2, 3):
        t = _hagen(60, 3, group)
        assert len(t) == 41 and sorted(t) == sorted(np.arange(-60, 61, 3))
        assert md.classify_scheme(t, 3.0) == "dose-symmetric"
    assert md.classify_scheme(list(np.arange(-60, 61, 3.0))) == "unidirectional"
    assert md.classify_scheme(list(np.arange(60, -61, -2.0))) == "unidirectional"
    bidir = list(np.arange(0, 61, 3.0)) + list(np.arange(-3, -61, -3.0))
    assert md.classify_scheme(bidir) == "bidirectional"
    # SerialEM's bidirectional series started off zero (the TS_07: -20° up to +58°, then -23° down to -59°)
    bidir_off = list(np.arange(-20, 59, 3.0)) + list(np.arange(-23, -60, -3.0))
    assert md.classify_scheme(bidir_off) == "bidirectional"
    # dose-symmetric about a lamella's pre-tilt (starts at the middle of the range, not at 0°)
    assert md.classify_scheme([-30, -27, -33, -24, -36, -21, -39]) == "dose-symmetric"
    assert md.classify_scheme([5.0, 5.0]) == "single" and md.classify_scheme([1.0]) == "single"
    assert md.classify_scheme([0, 9, -3, 3, -6, 6, -9]) == "other"  # +3 after +9: not outward


# --- every real file, cross-checked against mdocfile ------------------------------------------------------


def test_every_real_mdoc_agrees_with_mdocfile(shared_data: Path) -> None:
    for path in _all_mdocs(shared_data):
        m = md.read_mdoc(path)
        ref = _mdocfile_sections(path)
        ours = sorted(m.sections + m.other_sections, key=lambda s: s.line)
        assert len(ours) == len(ref), path
        for s, r in zip(ours, ref):
            assert s.tilt_angle_deg == r.TiltAngle, path
            assert s.raw.get("PixelSpacing") is None or float(s.raw["PixelSpacing"]) == r.PixelSpacing
            assert s.exposure_dose_e_A2 == r.ExposureDose
            assert s.num_sub_frames == r.NumSubFrames
            assert s.raw.get("DateTime") == r.DateTime
            if r.SubFramePath is not None:
                assert Path(md._windows_basename(s.sub_frame_path)).name == r.SubFramePath.name
            if r.TargetDefocus is not None:
                assert s.target_defocus_um == -r.TargetDefocus
            if r.DateTime is not None:
                assert s.datetime is not None
        d = md.describe(path)
        json.dumps(d)
        assert d["problems"] == [], path  # every real file reads cleanly, even in strict mode


def test_serialem_41_pacetomo(shared_data: Path) -> None:
    m = md.read_mdoc(shared_data / L1_TS)
    assert len(m.sections) == 41 and m.tilt_axis_deg == 94.0 and m.pixel_spacing_A == 2.663
    assert m.voltage_kV == 300.0 and m.image_size == (5760, 4092)
    assert m.sections[0].datetime == datetime(2023, 8, 11, 17, 44, 56)  # 4-digit year
    assert m.sections[0].raw["CtfFind"] == "-4.63612890625"
    d = md.describe(shared_data / L1_TS, dose_per_tilt_e_A2=2.5)
    first = d["acquisition"]["tilts_in_order"]
    # group-of-two dose-symmetric scheme: 0, 3, 6, -3, -6, 9, 12, -9, -12 ...
    np.testing.assert_allclose(first[:9], [0, 3, 6, -3, -6, 9, 12, -9, -12], atol=0.02)
    assert d["acquisition"]["scheme"] == "dose-symmetric"
    assert d["total_dose_e_A2"] == pytest.approx(41 * 2.5)


def test_frameset_single_and_movie_lookup(shared_data: Path, tmp_path: Path) -> None:
    m = md.read_mdoc(shared_data / FRAME_SINGLE)
    assert m.kind == "frameset" and len(m.sections) == 1
    assert m.title_lines[0].startswith("SerialEM: UMass_Krios")  # unbracketed "T = ..." title
    assert "T" not in m.global_fields and m.global_fields["Voltage"] == "300"
    s = m.sections[0]
    assert s.tilt_angle_deg == 32.984 and s.num_sub_frames == 12
    # FrameDosesAndNumber = dose per frame and count; it multiplies out to the exposure dose
    assert s.frame_dose_e_A2 * s.num_sub_frames == pytest.approx(s.exposure_dose_e_A2, rel=1e-4)
    assert s.target_defocus_um == 4.5 and s.defocus_um == pytest.approx(5.08286)
    # the movie beside a copy of the mdoc is found by its basename, the Windows folder ignored
    shutil.copy(shared_data / FRAME_SINGLE, tmp_path / "a.mdoc")
    movie = tmp_path / "s_mmm_00993_33.0_Oct08_07.39.05.tif"
    movie.write_bytes(b"")
    (rec,) = md.tilt_records(md.read_mdoc(tmp_path / "a.mdoc"))
    assert rec.movie_found and rec.movie_path == movie and rec.dose_e_A2 == pytest.approx(7.65892)


def test_movie_mdocs_folder(shared_data: Path, tmp_path: Path) -> None:
    paths = [shared_data / FRAME_MULTI, shared_data / FRAME_SINGLE]  # listed out of time order
    recs = md.tilt_records_from_movie_mdocs(paths, movie_dir=tmp_path, initial_dose_e_A2=1.0)
    assert [r.index_in_mdoc for r in recs] == [0, 1]
    assert [r.acquisition_order for r in recs] == [1, 0]  # 07:47:29 after 07:39:08
    assert recs[1].prior_dose_e_A2 == pytest.approx(1.0)
    assert recs[0].prior_dose_e_A2 == pytest.approx(1.0 + 7.65892)
    assert recs[0].num_sub_frames == 243 and not recs[0].movie_found
    assert recs[0].movie_path == tmp_path / "s_mmm_01013_33.0_Oct08_07.46.46.tif"
    assert recs[0].mdoc_path == paths[0]
    with pytest.raises(FormatError, match="one \\[FrameSet\\]"):
        md.tilt_records_from_movie_mdocs([shared_data / TS01_LF])


def test_montages(shared_data: Path) -> None:
    m = md.read_mdoc(shared_data / MONTAGE)
    assert m.kind == "montage" and m.tilt_axis_deg == -86.7
    assert [s.key for s in m.other_sections] == ["MontSection"]
    assert len(m.sections) == 62 and m.sections[1].raw["PieceCoordinates"] == "0 3400 0"
    mm = md.read_mdoc(shared_data / MONTAGE_MULTI)
    assert mm.kind == "montage" and len(mm.other_sections) >= 2
    assert [s.z_value for s in mm.other_sections[:2]] == [0, 1]


def test_stem_mdoc_matches_its_mrc(shared_data: Path) -> None:
    m = md.read_mdoc(shared_data / "mdoc/pypi__etspy-1.3.0/test_000.mdoc")
    info = mrc.read_header(shared_data / "tilt_series/pypi__etspy-1.3.0/test_000.mrc")
    assert len(m.sections) == info.n_sections == 2
    assert m.pixel_spacing_A == info.voxel_size_A[0] == 7.88
    assert m.tilt_axis_deg == -90.0
    np.testing.assert_allclose([s.tilt_angle_deg for s in m.sections], info.tilt_angles_deg, atol=0.005)
    assert m.sections[0].raw["ChannelName"] == "HAADF"


# --- errors -----------------------------------------------------------------------------------------


def _small_mdoc(path: Path, sections: list[dict[str, object]], **kw: object) -> Path:
    md.write_mdoc(
        path,
        title_lines=["SerialEM: test", "Tilt axis angle = 85.0, binning = 1  spot = 8  camera = 0"],
        global_fields={"PixelSpacing": 2.0, "ImageFile": "TS_01.mrc"},
        sections=sections,
        **kw,  # type: ignore[arg-type]
    )
    return path


def test_missing_tilt_angle(tmp_path: Path) -> None:
    p = _small_mdoc(
        tmp_path / "TS_01.mrc.mdoc",
        [{"TiltAngle": 0.0, "ExposureDose": 3.0}, {"ExposureDose": 3.0}, {"TiltAngle": 3.0, "ExposureDose": 3.0}],
    )
    with pytest.raises(FormatError) as err:
        md.read_mdoc(p)
    assert str(err.value) == f"{p}: [ZValue = 1] TiltAngle: missing"
    with pytest.warns(FormatWarning, match=r"\[ZValue = 1\] TiltAngle: missing"):
        m = md.read_mdoc(p, strict=False)
    assert [s.index for s in m.sections] == [0, 1] and [s.z_value for s in m.sections] == [0, 2]


def test_bad_values_and_lines(tmp_path: Path) -> None:
    p = tmp_path / "bad.mdoc"
    p.write_text("PixelSpacing = 2\n\n[ZValue = 0]\nTiltAngle = abc\n")
    with pytest.raises(FormatError, match=r"bad\.mdoc: \[ZValue = 0\] TiltAngle: not a number: 'abc'"):
        md.read_mdoc(p)
    p.write_text("PixelSpacing = 2\n[ZValue = 0]\nTiltAngle = 1\nDateTime = yesterday\n")
    with pytest.raises(FormatError, match="DateTime"):
        md.read_mdoc(p)
    p.write_text("PixelSpacing = 2\njunk line\n[ZValue = 0]\nTiltAngle = 1\n")
    with pytest.raises(FormatError, match=r"bad\.mdoc: line 2: "):
        md.read_mdoc(p)
    p.write_text("PixelSpacing = 2\n")
    with pytest.raises(FormatError, match="no \\[ZValue\\]"):
        md.read_mdoc(p)
    with pytest.raises(FormatError, match="no such file"):
        md.read_mdoc(tmp_path / "absent.mdoc")


def test_missing_movie_reported_and_extension_variant(tmp_path: Path) -> None:
    frames = tmp_path / "frames"
    frames.mkdir()
    secs = [
        {"TiltAngle": float(t), "ExposureDose": 3.0, "SubFramePath": rf"D:\data\frames\TS_01_{i:03d}_{t:.1f}.mrc"}
        for i, t in enumerate([0, 3, -3, -6, 6])
    ]
    p = _small_mdoc(tmp_path / "TS_01.mrc.mdoc", secs)
    (frames / "TS_01_000_0.0.mrc").write_bytes(b"")
    (frames / "TS_01_001_3.0.tif").write_bytes(b"")  # same movie, other format: found as a variant
    recs = md.tilt_records(md.read_mdoc(p), movie_dir=frames)
    assert [r.movie_found for r in recs] == [True, True, False, False, False]
    assert recs[1].movie_path == frames / "TS_01_001_3.0.tif"
    assert recs[2].movie_path == frames / "TS_01_002_-3.0.mrc"
    d = md.describe(p, movie_dir=frames)
    assert d["movies"] == {
        "referenced": 5,
        "found": 2,
        "missing": 3,
        "missing_names": ["TS_01_002_-3.0.mrc", "TS_01_003_-6.0.mrc", "TS_01_004_6.0.mrc"],
    }
    assert d["acquisition"]["order_source"] == "section order"
    assert d["acquisition"]["scheme"] == "dose-symmetric"


# --- writing ----------------------------------------------------------------------------------------


def test_round_trip_of_real_file(shared_data: Path, tmp_path: Path) -> None:
    src = md.read_mdoc(shared_data / TS01_LF)
    out = tmp_path / "copy.mdoc"
    md.write_mdoc(
        out,
        title_lines=src.title_lines,
        global_fields=dict(src.global_fields),
        sections=[{"ZValue": s.z_value, **s.raw} for s in src.sections],
    )
    back = md.read_mdoc(out)
    assert back.title_lines == src.title_lines and back.global_fields == src.global_fields
    for a, b in zip(src.sections, back.sections, strict=True):
        assert dataclasses.replace(a, line=0) == dataclasses.replace(b, line=0)
    assert b"\r" not in out.read_bytes()


def test_round_trip_of_python_values_crlf(tmp_path: Path) -> None:
    when = datetime(2024, 3, 5, 9, 7, 1)
    secs = [
        {"TiltAngle": 0.000999877, "ExposureDose": 3.0, "TargetDefocus": -4.0, "DateTime": when,
         "ImageShift": (-0.0108126, -0.121079), "NumSubFrames": 8, "Binning": 1},
        {"TiltAngle": 3.00113, "ExposureDose": 3.0, "TargetDefocus": -4.0, "DateTime": when, "NumSubFrames": 8,
         "SubFramePath": None},
    ]
    p = _small_mdoc(tmp_path / "w.mdoc", secs, crlf=True)
    raw = p.read_bytes()
    assert raw.count(b"\r\n") == raw.count(b"\n") and b"[ZValue = 1]\r\n" in raw
    text = raw.decode()
    assert "TiltAngle = 0.000999877\r\n" in text and "DateTime = 05-Mar-24  09:07:01\r\n" in text
    assert "[T = Tilt axis angle = 85.0, binning = 1  spot = 8  camera = 0]" in text
    assert "ImageShift = -0.0108126 -0.121079" in text and "SubFramePath" not in text
    m = md.read_mdoc(p)
    assert m.tilt_axis_deg == 85.0 and m.pixel_spacing_A == 2.0
    assert [s.tilt_angle_deg for s in m.sections] == [0.000999877, 3.00113]
    assert all(s.datetime == when and s.target_defocus_um == 4.0 and s.num_sub_frames == 8 for s in m.sections)
    recs = md.tilt_records(m)
    assert [r.prior_dose_e_A2 for r in recs] == [0.0, 3.0]  # equal DateTimes: section order
    assert [p.name for p in tmp_path.iterdir()] == ["w.mdoc"]


def test_format_value_like_serialem() -> None:
    assert md.format_value(155.2871234) == "155.287"
    assert md.format_value(0.009002591) == "0.00900259"
    assert md.format_value(105000.0) == "105000"
    assert md.format_value(True) == "1" and md.format_value(np.int64(7)) == "7"
    assert md.format_value(float("nan")) == "NaN"
    assert md.parse_serialem_datetime("30-Nov-15  15:21:38") == datetime(2015, 11, 30, 15, 21, 38)
    assert md.parse_serialem_datetime(md.format_serialem_datetime(datetime(1999, 12, 31, 23, 59, 59))) == datetime(
        1999, 12, 31, 23, 59, 59
    )
