"""Frame alignment + CTF on bad input: wrong gain shape, a movie that changed size, fits that fail."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pytest

from tomoguide.project import Project
from tomoguide.runner import RunRefused, StepFailed, StepRun, run_to_end
from tomoguide.steps.records import SeriesSet


def _imported(tmp_path: Path, session: Path, **import_values) -> Project:
    proj = Project.create(tmp_path / "proj", params={
        "import_movies": {"files_dir": str(session), **import_values},
        "motion_ctf": {"ctf_window_px": 64, "defocus_grid_x": 1, "defocus_grid_y": 1}})
    run_to_end(StepRun(proj, "import_movies"))
    return proj


def test_pure_noise_fits_fail_and_are_flagged_not_guessed(tmp_path: Path, mini_session: Path) -> None:
    proj = _imported(tmp_path, mini_session)
    st = run_to_end(StepRun(proj, "motion_ctf"))
    assert st.status == "done"
    sset, base = SeriesSet.load(proj.output_path("motion_ctf", "series"))
    flags = sset.series[0].flags["ctf_failed"]
    assert len(flags) == 5 and all(flags), "noise has no Thon rings: every fit must be flagged as failed"
    from tomoguide.compute.io.star import read_ctf_star

    table = read_ctf_star(sset.series[0].path("ctf_star", base))
    assert (table["tomoguideCtfFailed"] == 1).all() and (table["tomoguideCtfReason"] != "-").all()
    assert any("CTF fit failed" in line for line in st.log)
    assert st.metrics["n_ctf_failed"] == 10
    proj.close()


def test_gain_of_the_wrong_shape_names_the_file(tmp_path: Path, mini_session: Path) -> None:
    gain = tmp_path / "gain_wrong.mrc"
    with mrcfile.new(gain) as m:
        m.set_data(np.ones((80, 64), np.float32))  # transposed relative to the 64 x 80 movies
    proj = _imported(tmp_path, mini_session, gain_path=str(gain))
    with pytest.raises(StepFailed):
        run_to_end(StepRun(proj, "motion_ctf"))
    err = proj.data.steps["motion_ctf"].error or ""
    assert "gain_wrong.mrc" in err and "transpose" in err.lower(), err
    # nothing earlier is lost
    assert proj.is_up_to_date("import_movies")
    proj.close()


def test_movie_changed_after_import_names_the_file(tmp_path: Path, mini_session: Path) -> None:
    proj = _imported(tmp_path, mini_session)
    victim = sorted(mini_session.glob("TS_02_*.mrc"))[3]
    with mrcfile.new(victim, overwrite=True) as m:
        m.set_data(np.zeros((3, 60, 80), np.uint8))
    with pytest.raises(StepFailed):
        run_to_end(StepRun(proj, "motion_ctf"))
    err = proj.data.steps["motion_ctf"].error or ""
    assert victim.name in err and "frame size" in err
    proj.close()


def test_ctf_window_larger_than_the_images_is_refused(tmp_path: Path, mini_session: Path) -> None:
    proj = _imported(tmp_path, mini_session)
    proj.set_params("motion_ctf", {"ctf_window_px": 512})
    with pytest.raises(RunRefused) as err:
        StepRun(proj, "motion_ctf").preflight()
    assert "larger than the images" in str(err.value)
    proj.close()
