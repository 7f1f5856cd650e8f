"""The import step against what the mini session was written with (tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pytest

from tomoguide.project import Project
from tomoguide.runner import RunRefused, StepRun, run_to_end
from tomoguide.steps.import_movies import ImportMovies, ImportMoviesParams, load_series



def _project(tmp_path: Path, session: Path, **values) -> Project:
    return Project.create(tmp_path / "proj", params={"import_movies": {"files_dir": str(session), **values}})


def test_import_reads_angles_order_dose_and_previews(tmp_path: Path, mini_session: Path) -> None:
    proj = _project(tmp_path, mini_session, initial_dose_e_A2=1.0)
    progress = []
    run = StepRun(proj, "import_movies")
    assert [i for i in run.preflight() if i.level == "error"] == []
    st = run_to_end(run, progress.append)
    assert st.status == "done"
    fractions = [p.fraction for p in progress if p.fraction is not None]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(progress) >= 10
    series = load_series(proj.output_path("import_movies", "tilt_series"))
    assert [s.name for s in series] == ["TS_01", "TS_02"]
    s = series[0]
    # written in acquisition order 0, +3, -3, -6, +6 with 3 e/Å² each, 1 e/Å² before the first
    assert [t.tilt_deg for t in s.tilts] == [-6.0, -3.0, 0.0, 3.0, 6.0]
    assert [t.acquisition_order for t in s.tilts] == [3, 2, 0, 1, 4]
    assert [t.prior_dose_e_A2 for t in s.tilts] == [10.0, 7.0, 1.0, 4.0, 13.0]
    assert all(t.dose_e_A2 == 3.0 and t.n_frames == 3 and t.frame_shape_px == (64, 80) for t in s.tilts)
    g = s.geometry
    assert g.pixel_size_A == 2.5 and g.tilt_axis_deg == 85.0 and g.n_views == 5
    assert g.nominal_defocus_um == [3.0] * 5  # TargetDefocus = -3 in SerialEM's sign: 3 µm underfocus
    assert g.optics.voltage_kV == 300.0
    # the preview is the frame sum of each movie, in angle order
    with mrcfile.open(proj.output_path("import_movies", "previews") / f"{s.name}_framesums.mrc") as m:
        sums = m.data.copy()
    assert sums.shape == (5, 64, 80)
    for i, t in enumerate(s.tilts):
        with mrcfile.open(t.movie) as m:
            np.testing.assert_allclose(sums[i], m.data.astype(np.float32).sum(axis=0), rtol=1e-5, atol=1e-3)
    proj.close()


def test_typed_values_override_the_mdoc_with_warnings(tmp_path: Path, mini_session: Path) -> None:
    proj = _project(tmp_path, mini_session, tilt_axis_deg=-5.0, pixel_size_A=3.0, dose_per_tilt_e_A2=2.0)
    issues = StepRun(proj, "import_movies").check_issues()
    texts = [i.message for i in issues if i.level == "warning"]
    assert any("90°" in t and "tilt-axis" in t for t in texts), texts
    assert any("pixel size" in t for t in texts)
    st = run_to_end(StepRun(proj, "import_movies"))
    assert st.status == "done"
    s = load_series(proj.output_path("import_movies", "tilt_series"))[0]
    assert s.geometry.tilt_axis_deg == -5.0 and s.tilt_axis_source == "typed"
    assert s.geometry.pixel_size_A == 3.0 and s.tilts[0].dose_e_A2 == 2.0
    proj.close()


def test_empty_fields_are_read_from_the_mdoc(tmp_path: Path, mini_session: Path) -> None:
    proj = _project(tmp_path, mini_session, tilt_axis_deg=None)
    run_to_end(StepRun(proj, "import_movies"))
    s = load_series(proj.output_path("import_movies", "tilt_series"))[0]
    assert s.geometry.tilt_axis_deg == 85.0 and s.tilt_axis_source == "mdoc title"
    assert s.pixel_size_source == "mdoc PixelSpacing" and s.dose_source == "mdoc ExposureDose"
    proj.close()


def test_tomo5_axis_conversion(tmp_path: Path, session_writer) -> None:
    session = tmp_path / "s"
    session_writer(session, n_series=1, tilt_axis_deg=-175.0)
    proj = _project(tmp_path, session, tilt_axis_deg=None, tomo5_mdoc=True)
    run_to_end(StepRun(proj, "import_movies"))
    s = load_series(proj.output_path("import_movies", "tilt_series"))[0]
    assert s.geometry.tilt_axis_deg == pytest.approx(85.0)  # -1 * (-175) - 90
    proj.close()


def test_crlf_mdoc_gives_the_same_import(tmp_path: Path, session_writer) -> None:
    a, b = tmp_path / "lf", tmp_path / "crlf"
    session_writer(a, n_series=1)
    session_writer(b, n_series=1, crlf=True)
    assert b"\r\n" in next(b.glob("*.mdoc")).read_bytes()
    results = []
    for folder in (a, b):
        proj = Project.create(folder / "proj", params={"import_movies": {"files_dir": str(folder)}})
        run_to_end(StepRun(proj, "import_movies"))
        s = load_series(proj.output_path("import_movies", "tilt_series"))[0]
        results.append((s.geometry.tilt_angles_deg, s.geometry.acquisition_order, s.geometry.prior_dose_e_A2))
        proj.close()
    assert results[0] == results[1]


def test_movies_of_different_sizes_are_refused_naming_the_file(tmp_path: Path, mini_session: Path) -> None:
    victim = sorted(mini_session.glob("TS_01_*.mrc"))[2]
    with mrcfile.new(victim, overwrite=True) as m:
        m.set_data(np.zeros((3, 60, 80), np.uint8))
    proj = _project(tmp_path, mini_session)
    from tomoguide.runner import StepFailed

    with pytest.raises(StepFailed):
        run_to_end(StepRun(proj, "import_movies"))
    st = proj.data.steps["import_movies"]
    assert st.status == "failed" and victim.name in (st.error or "") and "differs" in (st.error or "")
    proj.close()


def test_no_matching_files_and_missing_gain_refuse_the_run(tmp_path: Path, mini_session: Path) -> None:
    proj = _project(tmp_path, mini_session, pattern="*.nothing", gain_path=str(tmp_path / "gain.mrc"))
    with pytest.raises(RunRefused) as err:
        StepRun(proj, "import_movies").preflight()
    assert "matches" in str(err.value)
    proj.set_params("import_movies", {"pattern": "*.mdoc"})
    with pytest.raises(RunRefused) as err:
        StepRun(proj, "import_movies").preflight()
    assert "gain.mrc" in str(err.value)
    proj.close()


def test_cancel_leaves_the_project_as_before(tmp_path: Path, mini_session: Path) -> None:
    proj = _project(tmp_path, mini_session)
    before = proj.data.steps["import_movies"].model_copy(deep=True)
    run = StepRun(proj, "import_movies")
    gen = run.execute()
    next(gen)
    next(gen)
    run.cancel_event.set()
    from tomoguide.steps.base import Cancelled

    with pytest.raises(Cancelled):
        next(gen)
    assert proj.data.steps["import_movies"] == before
    reopened = Project.open(tmp_path / "proj", readonly=True)
    assert reopened.data.steps["import_movies"] == before
    assert not any(p.name.endswith(".partial") for p in (tmp_path / "proj" / "steps" / "import_movies").iterdir())
    proj.close()


def test_params_hard_bounds() -> None:
    with pytest.raises(Exception):
        ImportMoviesParams(voltage_kV=5)
    p = ImportMoviesParams(amplitude_contrast=0.5)
    assert any(i.field == "amplitude_contrast" for i in p.soft_issues())
    assert ImportMovies.Params is ImportMoviesParams


# --- sessions recorded with other conventions (issue 14) ------------------------------------------------------

import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402

from tomoguide.compute.io import mdoc as mdocio  # noqa: E402
from tomoguide.compute.io.movies import write_movie_tiff  # noqa: E402
from tomoguide.steps.import_movies import format_survey, survey  # noqa: E402

TS01_LF = "mdoc/teamtomo__mdocfile/tests/test_data/tilt_series.mdoc"
TS01_CRLF = "mdoc/alisterburt__tomo_preprocessing/test_data/mdoc/TS_01.mrc.mdoc"
L1_TS = "mdoc/czimaginginstitute__AreTomo3/Mdoc/L1_ts_001.mrc.mdoc"
L1_TGT = "mdoc/czimaginginstitute__AreTomo3/Mdoc/L1_tgt_001.mrc.mdoc"
FRAME_SINGLE = "mdoc/teamtomo__mdocfile/tests/test_data/frame_set_single.mdoc"
ETSPY = [f"mdoc/pypi__etspy-1.3.0/test_00{i}.mdoc" for i in range(3)]


def _fake_movie(path: Path, *, n_frames: int = 2, shape: tuple[int, int] = (16, 16), seed: int = 0) -> None:
    """A tiny movie of Poisson counts (MRC or TIFF by the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = np.random.default_rng(seed).poisson(3.0, (n_frames, *shape)).astype(np.uint8)
    if path.suffix.lower() in (".tif", ".tiff"):
        write_movie_tiff(path, frames)
    else:
        with mrcfile.new(path, overwrite=True) as m:
            m.set_data(frames)


def _movies_for(mdoc_path: Path, folder: Path, shape: tuple[int, int] = (16, 16)) -> list[Path]:
    """Fake movies (``shape`` = (ny, nx) px), named by the mdoc's SubFramePath basenames, in ``folder``."""
    out = []
    for i, sec in enumerate(mdocio.read_mdoc(mdoc_path).sections):
        p = folder / mdocio._windows_basename(sec.sub_frame_path)
        _fake_movie(p, seed=i, shape=shape)
        out.append(p)
    return out


def _params(session: Path, **kw) -> ImportMoviesParams:
    return ImportMoviesParams(files_dir=str(session), **kw)


@pytest.mark.parametrize("name, frames_dir, axis, pixel", [
    (TS01_LF, "frames", 85.3, 5.4),  # SubFramePath D:\DATA\Flo\HGK149_20151130\frames\TS_01_000_0.0.mrc
    (TS01_CRLF, "HGK149_20151130/frames", 85.3, 5.4),
    (L1_TS, "amelo_20230811_33k_hydraliftout", 94.0, 2.663),  # Z:\krios2\amelo_..._hydraliftout\..._0001_-0.0.tif
])
def test_real_series_mdocs_import(tmp_path: Path, shared_data_dir: Path, name: str, frames_dir: str, axis: float,
                                  pixel: float) -> None:
    session = tmp_path / "session"
    session.mkdir()
    mdoc = session / Path(name).name
    shutil.copy(shared_data_dir / name, mdoc)
    if name == L1_TS:  # its tracking image's mdoc lies beside it in the real session
        shutil.copy(shared_data_dir / L1_TGT, session)
    movies = _movies_for(mdoc, session / frames_dir)
    # no dose in these files (ExposureDose = 0; FrameDosesAndNumber absent or 0): an error naming file, section, field
    sv = survey(_params(session))
    errors = [i.message for i in sv.errors]
    assert len(errors) == 1 and errors[0].startswith(f"{mdoc}: [ZValue = 0] ExposureDose: missing or 0 in 41 of 41")
    proj = _project(tmp_path, session, dose_per_tilt_e_A2=3.0)
    issues = StepRun(proj, "import_movies").check_issues()
    assert [i for i in issues if i.level != "info"] == []
    if name == L1_TS:
        assert any("L1_tgt_001.mrc.mdoc: one image at 0.0°" in i.message for i in issues)
    st = run_to_end(StepRun(proj, "import_movies"))
    assert st.status == "done"
    (s,) = load_series(proj.output_path("import_movies", "tilt_series"))
    g = s.geometry
    assert g.n_views == 41 and g.tilt_axis_deg == axis and s.tilt_axis_source == "mdoc title"
    assert g.pixel_size_A == pixel and s.pixel_size_source == "mdoc PixelSpacing" and s.dose_source == "typed"
    np.testing.assert_allclose(g.tilt_angles_deg, np.arange(-60, 61, 3), atol=0.02)
    # acquisition order from DateTime: first tilt near 0°, doses accumulate in that order
    first = min(s.tilts, key=lambda t: t.acquisition_order)
    assert abs(first.tilt_deg) < 0.02 and sorted(t.acquisition_order for t in s.tilts) == list(range(41))
    assert all(t.prior_dose_e_A2 == pytest.approx(3.0 * t.acquisition_order) for t in s.tilts)
    assert {Path(t.movie).parent for t in s.tilts} == {(session / frames_dir).resolve()}
    assert {Path(t.movie).name for t in s.tilts} == {m.name for m in movies}
    proj.close()


def _per_movie_session(folder: Path, shared: Path, tilts: list[float], *, dose: str | None = None) -> list[Path]:
    """Per-movie [FrameSet] mdocs made from the real frame_set_single.mdoc (one per tilt, dose-symmetric order,
    one minute apart, SubFramePath X:\\...\\frames\\<movie>.tif), each beside its fake movie in folder/frames."""
    template = (shared / FRAME_SINGLE).read_text()
    paths = []
    for i, t in enumerate(tilts):
        movie = f"s_mmm_{i:05d}_{t:.1f}_Oct08_07.{10 + i:02d}.05.tif"
        text = (template.replace("TiltAngle = 32.984", f"TiltAngle = {t:.3f}")
                .replace("s_mmm_00993_33.0_Oct08_07.39.05.tif", movie)
                .replace("DateTime = 08-Oct-21  07:39:08", f"DateTime = 08-Oct-21  07:{10 + i:02d}:08"))
        if dose is not None:
            text = text.replace("ExposureDose = 7.65892", f"ExposureDose = {dose}")
        p = folder / "frames" / f"{movie}.mdoc"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(text.replace("\r\n", "\n").replace("\n", "\r\n").encode())
        _fake_movie(folder / "frames" / movie, seed=i)
        paths.append(p)
    return paths


def test_per_movie_frame_mdocs_are_assembled_into_one_series(tmp_path: Path, shared_data_dir: Path) -> None:
    session = tmp_path / "session"
    tilts = [0.0, 3.0, -3.0, -6.0, 6.0, 9.0, -9.0]
    mdocs = _per_movie_session(session, shared_data_dir, tilts)
    proj = _project(tmp_path, session)  # defaults only
    issues = StepRun(proj, "import_movies").check_issues()
    assert [i for i in issues if i.level == "error"] == []
    # the mdoc names a DM4 super-resolution gain that is not here: a note, then no gain
    assert any("SuperRef_s_mmm_00000_-15.0_Oct08_01.59.24.dm4, not found" in i.message for i in issues)
    run_to_end(StepRun(proj, "import_movies"))
    (s,) = load_series(proj.output_path("import_movies", "tilt_series"))
    assert s.name == "s_mmm" and s.mdoc_kind == "per_movie" and len(s.tilts) == 7
    assert [t.tilt_deg for t in s.tilts] == sorted(tilts)
    by_order = sorted(s.tilts, key=lambda t: t.acquisition_order)
    assert [t.tilt_deg for t in by_order] == tilts  # DateTime order
    assert [Path(t.mdoc).name for t in by_order] == [p.name for p in mdocs]
    # RotationAngle 178.414 - 90; dose from ExposureDose; pixel from PixelSpacing
    assert s.geometry.tilt_axis_deg == pytest.approx(88.414) and s.tilt_axis_source == "mdoc RotationAngle"
    assert all(t.dose_e_A2 == pytest.approx(7.65892) for t in s.tilts) and s.dose_source == "mdoc ExposureDose"
    assert by_order[3].prior_dose_e_A2 == pytest.approx(3 * 7.65892)
    assert s.geometry.pixel_size_A == 1.2827 and s.gain is None
    proj.close()


def test_frame_mdocs_without_subframepath_name_their_movie_by_their_own_name(tmp_path: Path,
                                                                           shared_data_dir: Path) -> None:
    """SerialEM names a frame mdoc <movie>.mdoc; one written without SubFramePath still finds its movie."""
    session = tmp_path / "session"
    mdocs = _per_movie_session(session, shared_data_dir, [0.0, 3.0, -3.0])
    for p in mdocs:
        lines = p.read_bytes().decode().split("\r\n")
        p.write_bytes("\r\n".join(x for x in lines if not x.startswith("SubFramePath")).encode())
    (plan,) = survey(_params(session)).series
    assert [e for e in plan.issues if e.level == "error"] == []
    assert sorted(r.movie_path.name for r in plan.records) == sorted(p.name[:-5] for p in mdocs)
    assert all(r.movie_found for r in plan.records)


def test_per_movie_dose_from_frame_doses_and_dm4_gain(tmp_path: Path, shared_data_dir: Path) -> None:
    session = tmp_path / "session"
    _per_movie_session(session, shared_data_dir, [0.0, 3.0, -3.0], dose="0")
    dm4 = session / "frames" / "SuperRef_s_mmm_00000_-15.0_Oct08_01.59.24.dm4"
    dm4.write_bytes(b"DM4")
    sv = survey(_params(session))
    (s,) = sv.series
    assert s.dose_e_A2 == pytest.approx(0.63824 * 12) and s.dose_source == "mdoc FrameDosesAndNumber"
    (err,) = sv.errors
    assert str(dm4) in err.message and "dm2mrc" in err.message and "DM4" in err.message
    gain = np.random.default_rng(1).uniform(0.9, 1.1, (16, 16)).astype(np.float32)
    from tomoguide.compute.io.mrc import write_mrc

    write_mrc(dm4.with_suffix(".mrc"), gain, 1.0)  # what dm2mrc makes
    sv = survey(_params(session))
    assert sv.errors == [] and sv.series[0].gain.path == dm4.with_suffix(".mrc")
    assert "converted copy of the mdoc's GainReference" in sv.series[0].gain.how


def test_stem_per_tilt_mdocs_assembled(tmp_path: Path, shared_data_dir: Path) -> None:
    session = tmp_path / "stem"
    session.mkdir()
    for name in ETSPY:
        shutil.copy(shared_data_dir / name, session)
        _fake_movie(session / mdocio.read_mdoc(session / Path(name).name).global_fields["ImageFile"])
    proj = _project(tmp_path, session, dose_per_tilt_e_A2=1.0)
    run_to_end(StepRun(proj, "import_movies"))
    (s,) = load_series(proj.output_path("import_movies", "tilt_series"))
    assert s.name == "test" and [round(t.tilt_deg) for t in s.tilts] == [-5, 0, 5]
    assert [t.acquisition_order for t in s.tilts] == [1, 0, 2]  # 16:24:40, 16:24:15, 16:27:05
    assert s.geometry.tilt_axis_deg == -90.0 and s.geometry.pixel_size_A == 7.88
    proj.close()


def _frames_layout_session(data: Path, *, crlf: bool = True, gain_name: str = "CountRef_TS_07.mrc"
                           ) -> tuple[np.ndarray, Path]:
    """The issue's session by hand: data/TS_07.mdoc (CRLF) naming X:\\Frames\\TS_07\\<movie>.tif, the LZW TIFF movies
    in data/Frames/TS_07/, the gain CountRef_TS_07.mrc in data/Frames/ stored flipped in Y; tilt axis −94°. The
    movies are Poisson counts of a flat beam divided by the camera's gain (so the gain's pattern is in them)."""
    from tomoguide.compute.io.mrc import write_mrc

    rng = np.random.default_rng(14)
    shape = (96, 128)
    gain_cam = rng.lognormal(0.0, 0.15, shape).astype(np.float32)  # camera orientation
    frames_dir = data / "Frames" / "TS_07"
    frames_dir.mkdir(parents=True)
    stored = np.ascontiguousarray(gain_cam[::-1, :])
    if gain_name.endswith(".mrc"):
        write_mrc(data / "Frames" / gain_name, stored, 2.0)
    else:  # SerialEM's and EPU's .gain: a float32 TIFF, stored top row first like the TIFF movies (io.movies)
        from tomoguide.compute.io.movies import write_gain_tiff

        write_gain_tiff(data / "Frames" / gain_name, stored)
    tilts = [-20.0, -10.0, 0.0, 10.0, 20.0]
    lines = ["PixelSpacing = 2", "Voltage = 300", "ImageFile = TS_07.mrc", "", "[T = SerialEM: Krios  01-Jan-24]", "",
             "[T =     Tilt axis angle = -94.0, binning = 1  spot = 8  camera = 0]", ""]
    for i, t in enumerate(tilts):  # bidirectional from -20: -20, -10, 0 ... in file order
        movie = f"TS_07_{i:03d}_{t:.2f}.tif"
        counts = rng.poisson(30.0 / gain_cam, (4, *shape)).astype(np.uint16)
        write_movie_tiff(frames_dir / movie, counts, compression="lzw")
        lines += [f"[ZValue = {i}]", f"TiltAngle = {t}", "PixelSpacing = 2", "ExposureDose = 3",
                  "RotationAngle = -4", f"SubFramePath = X:\\Frames\\TS_07\\{movie}", "NumSubFrames = 4",
                  f"DateTime = 01-Jan-24  10:{i:02d}:00", ""]
    mdoc = data / "TS_07.mdoc"
    mdoc.write_bytes(("\r\n" if crlf else "\n").join(lines).encode())
    return gain_cam, mdoc


def test_windows_frames_layout_found_with_defaults(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _frames_layout_session(data)
    proj = _project(tmp_path, data)
    issues = StepRun(proj, "import_movies").check_issues()
    assert issues == []
    text = format_survey(survey(proj.params("import_movies")))
    assert "movies: 5 of 5 found (5 in Frames/TS_07/ (folder named by the mdoc))" in text
    assert "gain: Frames/CountRef_TS_07.mrc (found in Frames/)" in text
    assert "tilt axis: -94° (mdoc title)" in text
    run_to_end(StepRun(proj, "import_movies"))
    (s,) = load_series(proj.output_path("import_movies", "tilt_series"))
    assert s.geometry.tilt_axis_deg == -94.0 and len(s.tilts) == 5
    assert Path(s.gain).name == "CountRef_TS_07.mrc" and s.gain_source == "found in Frames/"
    go = s.gain_orientation
    # stored flipped in Y: detected from the movies' fixed pattern
    assert go is not None and go.decided and (go.transpose, go.flip_x, go.flip_y) == (False, False, True)
    assert go.confidence > 5.0
    proj.close()


def test_dot_gain_tiff_is_found_and_read(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _frames_layout_session(data, gain_name="20240101_K3.gain")
    proj = _project(tmp_path, data)
    run_to_end(StepRun(proj, "import_movies"))
    (s,) = load_series(proj.output_path("import_movies", "tilt_series"))
    assert Path(s.gain).name == "20240101_K3.gain" and s.gain_source == "found in Frames/"
    go = s.gain_orientation
    assert go is not None and go.decided and (go.transpose, go.flip_x, go.flip_y) == (False, False, True)
    proj.close()


def test_override_and_duplicate_mdocs_are_refused_naming_both(tmp_path: Path, mini_session: Path) -> None:
    ts1, ts2 = mini_session / "TS_01.mrc.mdoc", mini_session / "TS_02.mrc.mdoc"
    override = mini_session / "TS_01.mrc_override.mdoc"
    shutil.copy(ts1, override)
    copy = mini_session / "old" / "TS_02.mrc.mdoc"
    copy.parent.mkdir()
    shutil.copy(ts2, copy)
    sv = survey(_params(mini_session))
    errors = [i.message for i in sv.errors]
    assert len(errors) == 2
    assert any(str(override) in e and str(ts1) in e and "override" in e for e in errors)
    assert any(str(ts2) in e and str(copy) in e and "5 of the same movies" in e for e in errors)
    assert [s.name for s in sv.series] == ["TS_01"]  # neither copy of TS_02 is imported
    # two per-movie mdocs of one movie: refused too
    override.unlink()
    shutil.rmtree(copy.parent)
    for name in ("a", "b"):
        mdocio.write_mdoc(mini_session / f"{name}.mdoc", title_lines=["SerialEM"], global_fields={},
                          sections=[{"FrameSet": 0, "TiltAngle": 0.0, "SubFramePath": r"X:\f\lone_000_0.0.tif"}],
                          section_key="FrameSet")
    errors = [i.message for i in survey(_params(mini_session)).errors]
    assert errors == [f"{mini_session / 'a.mdoc'} and {mini_session / 'b.mdoc'} describe the same movie "
                      r"(X:\f\lone_000_0.0.tif): duplicate mdocs are not imported; remove one or narrow the Pattern"]


def test_series_mdoc_preferred_over_its_per_movie_mdocs(tmp_path: Path, mini_session: Path) -> None:
    md1 = mdocio.read_mdoc(mini_session / "TS_01.mrc.mdoc")
    for sec in md1.sections:  # SerialEM's frame mdoc beside each movie of TS_01
        movie = mdocio._windows_basename(sec.sub_frame_path)
        mdocio.write_mdoc(mini_session / f"{movie}.mdoc", title_lines=["SerialEM"], global_fields={},
                          sections=[{"FrameSet": 0, **sec.raw}], section_key="FrameSet")
    sv = survey(_params(mini_session))
    assert [s.name for s in sv.series] == ["TS_01", "TS_02"] and sv.errors == []
    assert sv.series[0].absorbed == 5 and "its 5 per-movie mdocs left out" in format_survey(sv)
    assert len(sv.mdocs) == 7
    # a damaged frame mdoc (a tilt angle given twice, a file cut short) of a movie the series mdoc lists does not
    # block the session, wherever it sorts among the mdocs
    movies = sorted(mini_session.glob("*.mdoc"))
    broken = next(p for p in movies if p.name.startswith("TS_01_") and p.name != "TS_01.mrc.mdoc")
    broken.write_text(broken.read_text() + "TiltAngle = 3.0\n")
    damaged = broken.with_name("aaa_" + broken.name)  # sorts before the series mdoc
    damaged.write_text("[FrameSet = 0]\nTiltAngle = \n")
    sv = survey(_params(mini_session))
    assert [s.name for s in sv.series] == ["TS_01", "TS_02"]
    assert [e.message for e in sv.errors if e.message.startswith(f"{broken}:")] == []
    # a damaged mdoc no series mdoc accounts for is still reported
    assert any(e.message.startswith(f"{damaged}:") for e in sv.errors)


def test_missing_axis_pixel_and_movies_named(tmp_path: Path, mini_session: Path, monkeypatch) -> None:
    import tomoguide.steps.import_movies as step

    monkeypatch.setattr(step, "_data_axis_search", lambda: None)  # as without the alignment's axis search
    for p in mini_session.glob("*.mdoc"):
        text = p.read_text()
        text = text.replace("Tilt axis angle = 85.0, ", "").replace("RotationAngle = -95\n", "")
        p.write_text(text.replace("PixelSpacing = 2.5\n", ""))
    victim = sorted(mini_session.glob("TS_02_*.mrc"))[1]
    victim.unlink()
    sv = survey(_params(mini_session))
    errors = [i.message for i in sv.errors]
    assert "TS_01.mrc.mdoc: the mdoc gives no tilt-axis angle (no 'Tilt axis angle' title, TiltAxisAngle or " \
           "RotationAngle); type one in" in errors
    assert "TS_01.mrc.mdoc: PixelSpacing missing; type the pixel size in" in errors
    assert any(e.startswith(f"TS_02.mrc.mdoc: 1 movie file(s) missing: {victim.name}") for e in errors)
    text = format_survey(sv)
    assert f"MISSING: {victim.name}" in text and "movies: 4 of 5 found" in text and "tilt axis: unknown" in text
    sv = survey(_params(mini_session, tilt_axis_deg=85.0, pixel_size_A=2.5))
    assert [e.message for e in sv.errors] == [e for e in errors if "missing:" in e]


def test_tomo5_axis_flagged(tmp_path: Path, session_writer) -> None:
    session = tmp_path / "s"
    session_writer(session, n_series=1, tilt_axis_deg=-176.0)
    warn = [i.message for i in survey(_params(session)).issues() if i.level == "warning"]
    assert len(warn) == 1 and "Tomo5 mdoc" in warn[0] and "86°" in warn[0]
    sv = survey(_params(session, tomo5_mdoc=True))
    assert sv.issues() == [] and sv.series[0].axis_deg == 86.0
    assert sv.series[0].axis_source == "mdoc title (Tomo5 conversion)"


def test_several_gains_warn_and_use_the_newest(tmp_path: Path, mini_session: Path) -> None:
    old, new = mini_session / "gain_old.mrc", mini_session / "CountRef_new.mrc"
    for p in (old, new):
        p.write_bytes(b"")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    sv = survey(_params(mini_session))
    assert all(s.gain.path == new for s in sv.series)
    (w,) = [i.message for i in sv.issues() if i.level == "warning"]
    assert "2 gain references found" in w and "gain_old.mrc" in w and "using the newest, CountRef_new.mrc" in w
    # typed: used as typed; 'none': no gain
    assert survey(_params(mini_session, gain_path=str(old))).series[0].gain.path == old
    assert survey(_params(mini_session, gain_path="none")).series[0].gain.path is None
    # typed as a bare name (the GUI user types the file's name): looked for in the session folder, not in the
    # working folder
    assert survey(_params(mini_session, gain_path="gain_old.mrc")).series[0].gain.path == old
    missing = survey(_params(mini_session, gain_path="gain_lost.mrc")).errors
    assert any(e.message.startswith(f"gain_lost.mrc: gain image not found (looked in {mini_session}")
               for e in missing)


def test_movie_folder_outside_the_session(tmp_path: Path, mini_session: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    for p in mini_session.glob("TS_02_*.mrc"):
        shutil.move(p, store / p.name)
    errors = [i for i in survey(_params(mini_session)).errors]
    assert len(errors) == 1 and errors[0].field == "movies_dir" and "5 movie file(s) missing" in errors[0].message
    sv = survey(_params(mini_session, movies_dir=str(store)))
    assert sv.errors == [] and {r.movie_how for r in sv.series[1].records} == {"in the movie folder"}


def test_axis_from_the_data_when_no_mdoc_gives_one(tmp_path: Path, tiny_dataset: Path) -> None:
    from tomoguide.compute import align

    if not hasattr(align, "search_tilt_axis"):
        pytest.skip("the alignment module has no search_tilt_axis yet")
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset / "data", data)
    (mdoc,) = data.rglob("*.mdoc")
    lines = [ln for ln in mdoc.read_text().splitlines() if not ln.startswith("RotationAngle")]
    mdoc.write_text("\n".join(lines).replace("Tilt axis angle = 85.0, ", "") + "\n")
    proj = _project(tmp_path, data)
    issues = StepRun(proj, "import_movies").check_issues()
    assert [i.level for i in issues] == ["info"] and "estimated from the frame sums" in issues[0].message
    run_to_end(StepRun(proj, "import_movies"))
    (s,) = load_series(proj.output_path("import_movies", "tilt_series"))
    truth = json.loads((tiny_dataset / "truth" / "summary.json").read_text())["params"]["tilt_axis_deg"]
    err = (s.geometry.tilt_axis_deg - truth + 90.0) % 180.0 - 90.0  # a line: known up to 180°
    assert s.tilt_axis_source == "data" and abs(err) < 2.0, (s.geometry.tilt_axis_deg, truth)
    proj.close()


def _reduced_scenario(name: str, **extra):
    """A scenario of synth.SCENARIOS at test size: 256² px, 5 tilts (±6° in 3° steps), 2 frames, a few particles;
    its session conventions (layout, mdoc kind, gain name and orientation, movie format, axes) unchanged."""
    from tomoguide import synth

    p = synth.SCENARIOS[name]
    upd = dict(image_nx_px=256, image_ny_px=256, max_tilt_deg=6.0, tilt_step_deg=3.0, n_frames=2, n_particles=6,
               dark_view_tilts_deg=[], jump_view_tilts_deg=[], truth_binning=4, **extra)
    if p.tilt_scheme == "bidirectional":
        upd["start_tilt_deg"] = -3.0
    return synth.SimParams.model_validate({**p.model_dump(), **upd})


@pytest.mark.parametrize("scenario, extra", [("frames_windows", {}), ("per_movie_mdocs", {"n_series": 1})])
def test_simulated_sessions_of_other_layouts_import_with_defaults(tmp_path: Path, scenario: str, extra: dict) -> None:
    """The simulator's Frames/ layout (Windows SubFramePath, LZW TIFF, CRLF, CountRef gain flipped in Y) and its
    per-movie [FrameSet] mdocs (no series mdoc; gain transposed) import with the session folder as the only
    parameter: every movie found, the mdoc's axis, the gain and its orientation as planted."""
    from tomoguide import synth

    params = _reduced_scenario(scenario, **extra)
    synth.generate(tmp_path / "sim", params)
    planted = json.loads((tmp_path / "sim" / "truth" / "summary.json").read_text())["planted"]
    proj = _project(tmp_path, tmp_path / "sim" / "data")
    issues = StepRun(proj, "import_movies").check_issues()
    assert issues == [], issues
    run_to_end(StepRun(proj, "import_movies"))
    series = load_series(proj.output_path("import_movies", "tilt_series"))
    assert [s.name for s in series] == planted["series_names"]
    for s in series:
        g = s.geometry
        assert g.n_views == 5 and g.pixel_size_A == params.pixel_size_A
        assert g.tilt_axis_deg == pytest.approx(planted["tilt_axis"]["mdoc_deg"], abs=0.01)
        assert s.tilt_axis_source == ("mdoc title" if params.mdoc_kind != "per_movie" else "mdoc RotationAngle")
        assert s.mdoc_kind == ("per_movie" if params.mdoc_kind == "per_movie" else "series")
        order = sorted(s.tilts, key=lambda t: t.acquisition_order)
        assert [t.tilt_deg for t in order] == planted["tilts_in_acquisition_order"]
        assert all(t.dose_e_A2 == params.dose_per_tilt_e_A2 for t in s.tilts)
        assert Path(s.gain).resolve() == (tmp_path / "sim" / planted["gain"]["path"]).resolve()
        go = s.gain_orientation
        assert go is not None and go.decided
        assert (go.transpose, go.flip_x, go.flip_y) == (planted["gain"]["transpose"], planted["gain"]["flip_x"],
                                                        planted["gain"]["flip_y"])
    proj.close()


def test_the_shared_mdoc_folder_as_one_session(tmp_path: Path, shared_data_dir: Path) -> None:
    """Every real mdoc at once (recursive default pattern): the tilt series are found, the rest is reported."""
    session = tmp_path / "mdoc"
    shutil.copytree(shared_data_dir / "mdoc", session)
    sv = survey(_params(session, dose_per_tilt_e_A2=3.0))
    assert len(sv.mdocs) == 11
    errors = [i.message for i in sv.errors]
    # TS_01 twice (the LF file and its CRLF copy): refused, naming both, never paired
    assert any(str(session / TS01_LF.removeprefix("mdoc/")) in e and str(session / TS01_CRLF.removeprefix("mdoc/")) in e
               and "41 of the same movies" in e for e in errors)
    names = {s.name: s for s in sv.series}
    assert set(names) == {"L1_ts_001", "test"}
    assert len(names["L1_ts_001"].records) == 41 and names["L1_ts_001"].axis_deg == 94.0
    assert [round(r.tilt_angle_deg) for r in names["test"].records] == [0, -5, 5]
    notes = [i.message for i in sv.issues() if i.level != "error"]
    assert sum("a montage, not a tilt series" in n for n in notes) == 2
    assert any("L1_tgt_001.mrc.mdoc: one image at 0.0°" in n for n in notes)
    assert any("2 per-movie mdocs at one tilt angle (32.984°" in n for n in notes)  # the two frame sets at 33°


def test_pixel_spacing_of_a_binned_stack_is_scaled_to_the_movies(tmp_path: Path, shared_data_dir: Path) -> None:
    """SerialEM's PixelSpacing is that of the saved stack (ImageSize, after Binning): EMPIAR-10164's TS_01 mdoc
    (tomo_preprocessing test data, BSD-3) says 5.4 Å at ImageSize 924 × 958 with Binning 4, for movies at 1.35 Å.
    Here its ImageSize is cut to 60 × 64 (the sections as recorded) and the movies are 4× that, 240 × 256 px."""
    session = tmp_path / "session"
    session.mkdir()
    text = (shared_data_dir / TS01_CRLF).read_bytes().decode()
    assert "ImageSize = 924 958" in text
    mdoc = session / "TS_01.mrc.mdoc"
    mdoc.write_bytes(text.replace("ImageSize = 924 958", "ImageSize = 60 64").encode())
    _movies_for(mdoc, session / "HGK149_20151130/frames", shape=(256, 240))
    sv = survey(_params(session, dose_per_tilt_e_A2=3.0))
    (plan,) = sv.series
    assert plan.pixel_A == pytest.approx(1.35) and plan.pixel_source == "mdoc PixelSpacing scaled to the movies"
    assert any("PixelSpacing 5.4 Å is that of its saved stack" in i.message and i.level == "warning"
               for i in plan.issues)
    # movies of the stack's own size: PixelSpacing as it is
    _movies_for(mdoc, session / "HGK149_20151130/frames", shape=(64, 60))
    (plan,) = survey(_params(session, dose_per_tilt_e_A2=3.0)).series
    assert plan.pixel_A == pytest.approx(5.4) and plan.pixel_source == "mdoc PixelSpacing"
