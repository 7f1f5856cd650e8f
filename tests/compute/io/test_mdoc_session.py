"""Finding a session's files from its mdocs: movies by name in any layout, single-tilt mdocs grouped into series,
doses from FrameDosesAndNumber, the tilt axis from RotationAngle, Thermo mdocs flagged — on real mdocs."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from tomoguide.compute.io import mdoc as md
from tomoguide.compute.io.errors import FormatError

TS01_LF = "mdoc/teamtomo__mdocfile/tests/test_data/tilt_series.mdoc"
TS01_CRLF = "mdoc/alisterburt__tomo_preprocessing/test_data/mdoc/TS_01.mrc.mdoc"
L1_TS = "mdoc/czimaginginstitute__AreTomo3/Mdoc/L1_ts_001.mrc.mdoc"
L1_TGT = "mdoc/czimaginginstitute__AreTomo3/Mdoc/L1_tgt_001.mrc.mdoc"
FRAME_SINGLE = "mdoc/teamtomo__mdocfile/tests/test_data/frame_set_single.mdoc"
FRAME_MULTI = "mdoc/teamtomo__mdocfile/tests/test_data/frame_set_multiple.mdoc"
ETSPY = [f"mdoc/pypi__etspy-1.3.0/test_00{i}.mdoc" for i in range(3)]


# --- tilt axis ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, title_axis", [(TS01_LF, 85.3), (TS01_CRLF, 85.3), (L1_TS, 94.0), (L1_TGT, 94.0),
                                              (ETSPY[0], -90.0)])
def test_rotation_angle_minus_90_is_the_titles_axis_in_real_files(shared_data: Path, name: str,
                                                                  title_axis: float) -> None:
    """SerialEM's RotationAngle − 90° (wrapped) equals the title's 'Tilt axis angle' in every real file that has
    both: TS_01 175.3 -> 85.3, the SerialEM 4.1 series −176 -> 94, the STEM series 0 -> −90."""
    m = md.read_mdoc(shared_data / name)
    assert md.tilt_axis_info([m]) == (title_axis, "mdoc title")
    rot = {s.rotation_angle_deg for s in m.sections}
    assert len(rot) == 1
    assert md.axis_from_rotation_angle(rot.pop()) == pytest.approx(title_axis, abs=1e-9)
    # without the title, the sections' RotationAngle gives the same axis
    m.title_lines = []
    assert md.tilt_axis_info([m]) == (pytest.approx(title_axis, abs=1e-6), "mdoc RotationAngle")


def test_frame_mdoc_axis_from_rotation_angle_and_wrapping(shared_data: Path) -> None:
    m = md.read_mdoc(shared_data / FRAME_SINGLE)  # no 'Tilt axis angle' title, RotationAngle = 178.414
    assert md.tilt_axis_info([m]) == (pytest.approx(88.414), "mdoc RotationAngle")
    assert md.axis_from_rotation_angle(-95.0) == 175.0 and md.axis_from_rotation_angle(270.0) == 180.0
    assert md.axis_from_rotation_angle(-176.0) == 94.0 and md.axis_from_rotation_angle(-4.0) == -94.0
    m.sections[0].rotation_angle_deg = None
    assert md.tilt_axis_info([m]) == (None, "unknown")
    m.global_fields["TiltAxisAngle"] = "-176.2"
    assert md.tilt_axis_info([m]) == (-176.2, "mdoc TiltAxisAngle")


def test_thermo_tomo5_signature_and_axis(shared_data: Path, tmp_path: Path) -> None:
    for name in (TS01_LF, L1_TS, FRAME_SINGLE, *ETSPY):
        assert md.thermo_signature(md.read_mdoc(shared_data / name)) is None, name
    p = tmp_path / "Position_1.mdoc"  # the layout Tomography 5 writes: a global TiltAxisAngle, EPU movie names
    p.write_text("PixelSpacing = 1.5\nVoltage = 300\nTiltAxisAngle = -176.3\nImageFile = Position_1.mrc\n\n"
                 "[ZValue = 0]\nTiltAngle = 0.0\nSubFramePath = D:\\Position_1_001[0.00]_Fractions.mrc\n\n"
                 "[ZValue = 1]\nTiltAngle = 3.0\nSubFramePath = D:\\Position_1_002[3.00]_Fractions.mrc\n")
    m = md.read_mdoc(p)
    assert "TiltAxisAngle" in md.thermo_signature(m)
    assert md.tilt_axis_info([m]) == (-176.3, "mdoc TiltAxisAngle")
    assert md.looks_like_tomo5_axis(-176.3) and md.looks_like_tomo5_axis(175.0)
    assert not md.looks_like_tomo5_axis(-178.0) and not md.looks_like_tomo5_axis(94.0)
    assert md.looks_like_tomo5_axis(-179.0, tolerance_deg=4.0)
    assert md.frame_name_parts("Position_1_002[3.00]_Fractions.mrc") == ("Position_1", 2, 3.0)


# --- dose ----------------------------------------------------------------------------------------------------


def test_dose_falls_back_to_frame_doses(shared_data: Path, tmp_path: Path) -> None:
    text = (shared_data / FRAME_SINGLE).read_text().replace("ExposureDose = 7.65892", "ExposureDose = 0")
    p = tmp_path / "s_mmm_00993_33.0_Oct08_07.39.05.tif.mdoc"
    p.write_text(text)
    sec = md.read_mdoc(p).sections[0]
    # FrameDosesAndNumber = 0.63824 12: 12 frames of 0.63824 e/Å²
    assert sec.frame_dose_total_e_A2 == pytest.approx(0.63824 * 12)
    assert md.section_dose(sec) == (pytest.approx(7.65888), "FrameDosesAndNumber")
    (rec,) = md.tilt_records_from_movie_mdocs([p])
    assert rec.dose_e_A2 == pytest.approx(7.65888) and rec.dose_source == "FrameDosesAndNumber"
    (rec,) = md.tilt_records_from_movie_mdocs([shared_data / FRAME_SINGLE])
    assert rec.dose_e_A2 == pytest.approx(7.65892) and rec.dose_source == "ExposureDose"
    (rec,) = md.tilt_records_from_movie_mdocs([p], dose_per_tilt_e_A2=2.0)
    assert rec.dose_e_A2 == 2.0 and rec.dose_source == "typed"
    # several pairs: the sum of dose × number
    assert md._frame_dose_total("0.5 10 0.25 4") == pytest.approx(6.0)


def test_no_dose_anywhere_names_file_section_and_field(shared_data: Path) -> None:
    # the SerialEM 4.1 series: ExposureDose = 0 and FrameDosesAndNumber = 0 14 in every section
    m = md.read_mdoc(shared_data / L1_TS)
    with pytest.raises(FormatError) as err:
        md.tilt_records(m)
    text = str(err.value)
    assert text.startswith(f"{shared_data / L1_TS}: [ZValue = 0] ExposureDose: missing or 0 in 41 of 41 sections")
    assert "FrameDosesAndNumber gives none" in text and "dose per tilt" in text


# --- finding movies ------------------------------------------------------------------------------------------


def _touch(p: Path) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"x")
    return p


def test_locate_follows_the_folders_the_path_names(tmp_path: Path) -> None:
    s = tmp_path / "session"
    good = _touch(s / "Frames" / "TS_07" / "TS_07_000_-20.00.tif")
    one = _touch(s / "TS_07" / "TS_07_000_-20.00.tif")  # matches one trailing folder only
    other = _touch(s / "backup" / "x" / "TS_07_000_-20.00.tif")  # same name, folder not named
    files = md.SessionFiles([s])
    written = r"X:\Session\Frames\TS_07\TS_07_000_-20.00.tif"
    loc = files.locate(written, mdoc_dir=s, session_dir=s)
    assert loc.path == good and not loc.ambiguous and not loc.renamed
    assert set(loc.others) == {one, other} and "Frames/TS_07/" in loc.how
    # POSIX paths and any case of the folder names work the same way
    assert files.locate("/data/frames/ts_07/TS_07_000_-20.00.tif", mdoc_dir=s, session_dir=s).path == good
    # beside the mdoc beats the named folders; the movie folder beats everything
    beside = _touch(s / "TS_07_000_-20.00.tif")
    assert md.SessionFiles([s]).locate(written, mdoc_dir=s, session_dir=s).path == beside
    mv = tmp_path / "elsewhere"
    chosen = _touch(mv / "TS_07_000_-20.00.tif")
    loc = md.SessionFiles([s, mv]).locate(written, mdoc_dir=s, session_dir=s, movies_dir=mv)
    assert loc.path == chosen and loc.how == "in the movie folder"


def test_locate_extension_variants_ambiguity_and_absence(tmp_path: Path) -> None:
    s = tmp_path / "s"
    a = _touch(s / "a" / "TS_01_001_3.0.mrc")
    b = _touch(s / "b" / "TS_01_001_3.0.mrc")
    files = md.SessionFiles([s])
    loc = files.locate(r"D:\frames\TS_01_001_3.0.tif", mdoc_dir=s, session_dir=s)
    assert loc.renamed and loc.ambiguous and loc.path == a and loc.others == (b,)
    # the folder named by the path decides
    loc = files.locate(r"D:\b\TS_01_001_3.0.tif", mdoc_dir=s, session_dir=s)
    assert loc.path == b and not loc.ambiguous
    miss = files.locate(r"D:\b\TS_01_002_-3.0.tif", mdoc_dir=s / "a", session_dir=s)
    assert miss.path is None and miss.how == "not found" and miss.expected == s / "a" / "TS_01_002_-3.0.tif"
    # hidden folders are not searched
    _touch(s / ".snapshot" / "TS_01_009_9.0.mrc")
    assert md.SessionFiles([s]).locate("TS_01_009_9.0.mrc", mdoc_dir=s).path is None


def test_index_is_built_once_and_is_fast(tmp_path: Path) -> None:
    s = tmp_path / "big"
    for k in range(20):
        d = s / "Frames" / f"TS_{k:02d}"
        d.mkdir(parents=True)
        for i in range(61):
            (d / f"TS_{k:02d}_{i:03d}_{-60 + 2 * i}.0.tif").write_bytes(b"")
    t0 = time.perf_counter()
    files = md.SessionFiles([s])
    found = [files.locate(rf"X:\Frames\TS_{k:02d}\TS_{k:02d}_{i:03d}_{-60 + 2 * i}.0.tif", mdoc_dir=s, session_dir=s)
             for k in range(20) for i in range(61)]
    dt = time.perf_counter() - t0
    assert files.n_files == 1220 and all(f.path is not None and not f.ambiguous for f in found)
    assert dt < 2.0, dt  # one walk and 1220 dictionary look-ups (a glob per movie would be far slower)


def test_linked_folders_are_followed_once(tmp_path: Path) -> None:
    s = tmp_path / "s"
    store = tmp_path / "storage"
    movie = _touch(store / "TS_01_000_0.0.tif")
    s.mkdir()
    os.symlink(store, s / "Frames")
    os.symlink(s, store / "loop")  # a loop back up
    files = md.SessionFiles([s])
    loc = files.locate(r"X:\Frames\TS_01_000_0.0.tif", mdoc_dir=s, session_dir=s)
    assert loc.path == s / "Frames" / movie.name and loc.path.is_file()


# --- single-tilt mdocs grouped into tilt series ----------------------------------------------------------


def test_frame_name_parts() -> None:
    assert md.frame_name_parts("TS_07_000_-20.00.tif.mdoc") == ("TS_07", 0, -20.0)
    assert md.frame_name_parts("s_mmm_00993_33.0_Oct08_07.39.05.tif.mdoc") == ("s_mmm", 993, 33.0)
    assert md.frame_name_parts("TS_001_012_-9.0.mrc") == ("TS_001", 12, -9.0)
    assert md.frame_name_parts("amelo_20230811_33kx_hydraliftout_0007_3.0.tif") == (
        "amelo_20230811_33kx_hydraliftout", 7, 3.0)
    assert md.frame_name_parts("test_002.mdoc") == ("test", 2, None)
    assert md.frame_name_parts("L1_tgt_001.mrc.mdoc") == ("L1_tgt", 1, None)
    assert md.frame_name_parts("overview.mdoc") == (None, None, None)


def test_stem_per_tilt_mdocs_are_one_series_in_time_order(shared_data: Path, tmp_path: Path) -> None:
    for name in ETSPY:
        shutil.copy(shared_data / name, tmp_path)
    items = [md.single_tilt(md.read_mdoc(tmp_path / Path(n).name)) for n in ETSPY]
    assert all(it is not None for it in items)
    assert [it.movie_name for it in items] == ["test0.mrc", "test5.001.mrc", "test-5.002.mrc"]  # ImageFile
    assert [it.section.num_sub_frames for it in items] == [2, 2, 2]  # two [ZValue] frames at one tilt
    (group,) = md.group_movie_mdocs(items)
    # acquired 16:24:15 (0°), 16:24:40 (−5°), 16:27:05 (+5°): time order, not file-number order
    assert [it.path.name for it in group] == ["test_000.mdoc", "test_002.mdoc", "test_001.mdoc"]
    recs = md.movie_group_records(group, locate=md._dir_locator(None), dose_per_tilt_e_A2=1.0)
    assert [round(r.tilt_angle_deg) for r in recs] == [0, -5, 5]
    assert [r.acquisition_order for r in recs] == [0, 1, 2] and [r.prior_dose_e_A2 for r in recs] == [0, 1, 2]
    assert md.tilt_axis_info([it.mdoc for it in group]) == (-90.0, "mdoc title")


def test_frame_sets_at_one_tilt_are_not_a_series(shared_data: Path) -> None:
    items = [md.single_tilt(md.read_mdoc(shared_data / n)) for n in (FRAME_SINGLE, FRAME_MULTI)]
    assert [it.prefix for it in items] == ["s_mmm", "s_mmm"]
    assert items[0].key == "s_mmm_00993_33.0_oct08_07.39.05"
    # both at 33° — a repeated angle, 8 minutes apart, with a rising file number: a re-take in one series
    (group,) = md.group_movie_mdocs(items)
    assert [it.section.tilt_angle_deg for it in group] == [32.984, 32.986]
    # the tracking image beside a PACEtomo series is one image at one tilt
    assert md.single_tilt(md.read_mdoc(shared_data / L1_TGT)).movie_name == "L1_tgt_001.mrc"
    assert md.single_tilt(md.read_mdoc(shared_data / L1_TS)) is None  # a tilt series


def _frame_mdoc(path: Path, tilt: float, when: str, movie: str, *, rotation: float = 175.0) -> md.MovieMdoc:
    md.write_mdoc(path, title_lines=["SerialEM: Krios   01-Jan-24  10:00:00"], global_fields={"Voltage": 300},
                  sections=[{"FrameSet": 0, "TiltAngle": tilt, "PixelSpacing": 1.5, "ExposureDose": 3.0,
                             "RotationAngle": rotation, "SubFramePath": f"X:\\s\\Frames\\{movie}", "NumSubFrames": 8,
                             "DateTime": when}], section_key="FrameSet")
    it = md.single_tilt(md.read_mdoc(path))
    assert it is not None
    return it


def test_two_series_with_one_prefix_are_split(tmp_path: Path) -> None:
    tilts = [0.0, 3.0, -3.0, -6.0, 6.0]
    items = []
    for hour in (10, 11):  # the same root name used twice: the numbers restart and the angles repeat
        for i, t in enumerate(tilts):
            movie = f"pos_{i:03d}_{t:.1f}_Jan01_{hour}.{i:02d}.00.tif"
            items.append(_frame_mdoc(tmp_path / f"{movie}.mdoc", t, f"01-Jan-24  {hour}:{i:02d}:00", movie))
    assert {it.prefix for it in items} == {"pos"}
    groups = md.group_movie_mdocs(items[::-1])
    assert [len(g) for g in groups] == [5, 5]
    assert [[it.section.tilt_angle_deg for it in g] for g in groups] == [tilts, tilts]
    assert sorted(g[0].section.datetime.hour for g in groups) == [10, 11]
    # without times, the numbers order them; the repeated angle with a number that falls back still splits
    for it in items:
        it.section.datetime = None
    assert [len(g) for g in md.group_movie_mdocs(items)] == [5, 5]


def test_keys_are_read_by_name_in_any_order(shared_data: Path, tmp_path: Path) -> None:
    src = md.read_mdoc(shared_data / L1_TS)
    out = tmp_path / "shuffled.mdoc"
    md.write_mdoc(out, title_lines=src.title_lines, global_fields=dict(reversed(list(src.global_fields.items()))),
                  sections=[{"ZValue": s.z_value, **dict(reversed(list(s.raw.items())))} for s in src.sections[::-1]])
    back = md.read_mdoc(out)
    assert back.tilt_axis_deg == 94.0 and back.pixel_spacing_A == 2.663 and back.image_size == (5760, 4092)
    by_z = {s.z_value: s for s in back.sections}
    for s in src.sections:  # the same values whatever the order of keys and sections
        b = by_z[s.z_value]
        assert (b.tilt_angle_deg, b.datetime, b.sub_frame_path, b.exposure_dose_e_A2, b.frame_dose_total_e_A2,
                b.rotation_angle_deg, b.target_defocus_um) == (
            s.tilt_angle_deg, s.datetime, s.sub_frame_path, s.exposure_dose_e_A2, s.frame_dose_total_e_A2,
            s.rotation_angle_deg, s.target_defocus_um)
    # acquisition order comes from DateTime, not from the order of the sections in the file
    ra, _ = md.acquisition_order(src.sections)
    rb, _ = md.acquisition_order(back.sections)
    assert list(rb) == list(ra[::-1])


def test_glob_patterns_over_the_index(tmp_path: Path) -> None:
    s = tmp_path / "s"
    for rel in ("TS_01.mdoc", "a/TS_02.MDOC", "a/b/TS_03.mdoc", "a/b/notes.txt", ".hidden/TS_09.mdoc"):
        _touch(s / rel)
    store = _touch(tmp_path / "store" / "TS_04.mdoc").parent
    os.symlink(store, s / "linked")  # Path.glob('**') would not enter it
    files = md.SessionFiles([s])
    rel = lambda ps: [p.relative_to(s).as_posix() for p in ps]  # noqa: E731
    assert rel(files.matching(s, "**/*.mdoc")) == ["TS_01.mdoc", "a/TS_02.MDOC", "a/b/TS_03.mdoc", "linked/TS_04.mdoc"]
    assert rel(files.matching(s, "*.mdoc")) == ["TS_01.mdoc"]
    assert rel(files.matching(s, "*/*.mdoc")) == ["a/TS_02.MDOC", "linked/TS_04.mdoc"]
    assert rel(files.matching(s, "a/**/TS_0[13].mdoc")) == ["a/b/TS_03.mdoc"]
    assert [p.name for p in files.matching(s / "a", "*.mdoc")] == ["TS_02.MDOC"]  # relative to the folder given
