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
