"""The runner and the resume rule by content (issue 15): identical reruns keep later steps done, a change and
its reversal restore "done" without recomputing, refused parameters are never saved, dead ends fail on their own
step, kept runs follow the retention rule, finished-but-unrecorded runs are adopted and leftovers cleaned, a
project moved with its data resumes without a re-browse, and the backup opens from the command line."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tomoguide.cli import main
from tomoguide.project import BACKUP_FILE, PROJECT_FILE, Project, ProjectError
from tomoguide.runner import StepFailed, StepRun, run_to_end
from tomoguide.steps import registry
from tomoguide.steps.base import Progress, RunContext, Step, StepParams, StepResult, param
from tomoguide.steps.import_movies import ImportMovies
from tomoguide.steps.records import SeriesSet
from tomoguide.steps.xray_erase import XrayErase


def copy_root(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst / "project"


def saved(project: Path) -> dict:
    return json.loads((project / PROJECT_FILE).read_text())


def statuses(project: Path) -> dict[str, str]:
    return {k: v["status"] for k, v in saved(project)["steps"].items()}


def run_dirs(project: Path, step_id: str) -> list[str]:
    folder = project / "steps" / step_id
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def need_done(project: Path, *step_ids: str) -> None:
    steps = saved(project)["steps"]
    for sid in step_ids:
        if steps[sid]["status"] != "done":
            pytest.fail(f"the tiny project's {sid} did not finish: {steps[sid].get('error')}")


# ---------------------------------------------------------------------------------------------------------------
# staleness by content
# ---------------------------------------------------------------------------------------------------------------


def test_rerun_with_unchanged_parameters_keeps_later_steps_up_to_date(tiny_project_root: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    project = copy_root(tiny_project_root, tmp_path / "root")
    before = statuses(project)
    assert before["xray_erase"] == before["reconstruct"] == "done"
    old_run = saved(project)["steps"]["xray_erase"]["run_dir"]
    assert main(["run", str(project), "--only", "xray_erase"]) == 0
    err = capsys.readouterr().err
    assert "later step(s) are done" in err and "identical results: the later steps stay done" in err
    after = saved(project)["steps"]
    assert statuses(project) == before
    assert after["xray_erase"]["run_dir"] != old_run  # it did run again
    assert [h["run_dir"] for h in after["xray_erase"]["history"]] == [old_run]  # the previous run is kept
    with Project.open(project, readonly=True) as proj:
        assert proj.first_not_done() == next((s for s, v in before.items() if v != "done"), None)


def test_change_and_change_back_restores_done_without_recomputation(tiny_project_root: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    project = copy_root(tiny_project_root, tmp_path / "root")
    before = statuses(project)
    first_run = saved(project)["steps"]["xray_erase"]["run_dir"]
    assert main(["run", str(project), "--until", "xray_erase", "--set", "xray_erase.peak_criterion=4"]) == 0
    mid = statuses(project)
    assert mid["xray_erase"] == "done" and mid["preprocess_for_alignment"] == "stale"
    assert all(mid[s] == "stale" for s in registry.downstream("xray_erase") if before[s] == "done")
    assert "the results of xray_erase changed" in saved(project)["steps"]["preprocess_for_alignment"]["stale_reason"]
    folders = run_dirs(project, "xray_erase")
    assert len(folders) == 2

    def no_recomputing(self, params, ctx):  # type: ignore[no-untyped-def]
        raise AssertionError("the kept run should have been restored, not recomputed")

    monkeypatch.setattr(XrayErase, "run", no_recomputing)
    capsys.readouterr()
    assert main(["run", str(project), "--until", "xray_erase", "--set", "xray_erase.peak_criterion=10"]) == 0
    assert "xray_erase: up to date, skipped" in capsys.readouterr().err
    assert statuses(project) == before
    after = saved(project)["steps"]["xray_erase"]
    assert after["run_dir"] == first_run and run_dirs(project, "xray_erase") == folders
    assert "nothing recomputed" in after["log"][-1]


def test_a_refused_set_leaves_the_project_file_byte_identical(tiny_project_root: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    need_done(tiny_project_root / "project", "pick")
    project = copy_root(tiny_project_root, tmp_path / "root")
    Project.open(project).close()  # the copy's first open records where its data are now (its own copy)
    path = project / PROJECT_FILE
    before = path.read_bytes()
    bak = (project / BACKUP_FILE).read_bytes()
    # the issue's case: each value valid alone, refused together by the step's check
    assert main(["run", str(project), "--only", "extract", "--set", "extract.box_px=20",
                 "--set", "extract.crop_px=400"]) == 2
    err = capsys.readouterr().err
    assert "must not be larger than the box" in err and "nothing was saved" in err
    assert path.read_bytes() == before and (project / BACKUP_FILE).read_bytes() == bak
    # a value outside its hard bounds, together with an accepted change of another step: nothing saved
    assert main(["run", str(project), "--only", "extract", "--set", "xray_erase.peak_criterion=12",
                 "--set", "extract.box_px=-5"]) == 2
    assert "box_px" in capsys.readouterr().err
    assert path.read_bytes() == before
    # accepted values are saved
    assert main(["run", str(project), "--until", "import_movies", "--set", "extract.crop_px=20"]) == 0
    assert saved(project)["steps"]["extract"]["params"]["crop_px"] == 20


# ---------------------------------------------------------------------------------------------------------------
# dead ends, retention, adoption, leftovers (on a small hand-written session: fast)
# ---------------------------------------------------------------------------------------------------------------


class _Params(StepParams):
    threshold: float = param(0.9, title="Threshold", unit="1", hard=(0.0, 1.0), help="A threshold.")


class DeadEndStep(Step):
    """Finds nothing above its threshold and says so (as the pick step does with 0 particles)."""

    id = "dead_end"
    title = "Find things"
    summary = "Test step."
    help = "<p>Test.</p>"
    Params = _Params
    inputs = ("import_movies",)

    def run(self, params, ctx: RunContext):  # type: ignore[no-untyped-def]
        yield Progress(0.5, "looking")
        out = ctx.write_text("found.txt", "0")
        return StepResult(outputs={"found": out}, nothing_for_next=f"0 things above the threshold: lower "
                                                                   f"Threshold (now {params.threshold:g})")


class EmptySeriesStep(Step):
    """Writes a valid record holding no tilt series (the generic dead end the runner detects)."""

    id = "empty_series"
    title = "Keep some series"
    summary = "Test step."
    help = "<p>Test.</p>"
    Params = _Params
    inputs = ("import_movies",)

    def run(self, params, ctx: RunContext):  # type: ignore[no-untyped-def]
        yield Progress(0.5, "filtering")
        return StepResult(outputs={"series": SeriesSet(series=[]).save(ctx.run_dir)})


class EmptyMapStep(Step):
    """Writes an average whose map is all zeros (the runner's generic "empty map" dead end)."""

    id = "empty_map"
    title = "Average them"
    summary = "Test step."
    help = "<p>Test.</p>"
    Params = _Params
    inputs = ("import_movies",)

    def run(self, params, ctx: RunContext):  # type: ignore[no-untyped-def]
        import numpy as np

        from tomoguide.compute.io.mrc import write_mrc
        from tomoguide.steps.average_records import AverageRecord

        yield Progress(0.5, "averaging")
        write_mrc(ctx.out_path("map.mrc"), np.zeros((8, 8, 8), np.float32), 4.0)
        rec = AverageRecord(voxel_A=4.0, box_px=8, symmetry="C1", half1=None, half2=None, mask=None)
        return StepResult(outputs={"average": rec.save(ctx.run_dir).parent})


class LinkStep(Step):
    """Passes an unchanged file on by a hard link (as steps pass stacks on)."""

    id = "linker"
    title = "Pass it on"
    summary = "Test step."
    help = "<p>Test.</p>"
    Params = _Params
    inputs = ("import_movies",)

    def run(self, params, ctx: RunContext):  # type: ignore[no-untyped-def]
        from tomoguide.steps.records import link_or_copy

        yield Progress(0.5, "linking")
        src = next(Path(ctx.output("import_movies", "previews")).glob("*.mrc"))
        link_or_copy(src, ctx.out_path("linked.mrc"))
        return StepResult(outputs={"linked": ctx.out_path("linked.mrc")})


class NextStep(Step):
    id = "next_step"
    title = "Use them"
    summary = "Test step."
    help = "<p>Test.</p>"
    Params = _Params
    inputs = ("dead_end", "empty_series", "empty_map")

    def run(self, params, ctx: RunContext):  # type: ignore[no-untyped-def]
        yield Progress(1.0, "")
        return StepResult(outputs={})


@pytest.fixture
def small_workflow(monkeypatch: pytest.MonkeyPatch) -> None:
    steps = (ImportMovies, DeadEndStep, EmptySeriesStep, EmptyMapStep, LinkStep, NextStep)
    monkeypatch.setattr(registry, "workflow", lambda: steps)


def _imported(tmp_path: Path, mini_session: Path) -> Project:
    proj = Project.create(tmp_path / "p", params={"import_movies": {"files_dir": str(mini_session)}})
    run_to_end(StepRun(proj, "import_movies"))
    return proj


def test_a_dead_end_fails_on_its_own_step_with_its_message(small_workflow: None, tmp_path: Path,
                                                         mini_session: Path) -> None:
    proj = _imported(tmp_path, mini_session)
    try:
        for step_id, words in (("dead_end", "0 things above the threshold: lower Threshold (now 0.9)"),
                               ("empty_series", "produced no tilt series"),
                               ("empty_map", "the map is empty (every voxel is 0)")):
            run = StepRun(proj, step_id)
            run.preflight()
            with pytest.raises(StepFailed, match="failed"):
                run_to_end(run)
            st = proj.data.steps[step_id]
            assert st.status == "failed" and words in (st.error or "")
            assert not any("Traceback" in line for line in st.log)  # the step's message, not a bug report
            assert run_dirs(proj.dir, step_id) == []  # nothing half-made left
        issues = StepRun(proj, "next_step").check_issues()
        assert any(i.level == "error" and "run “Find things” first (it is failed)" in i.message for i in issues)
        assert proj.is_up_to_date("import_movies")
    finally:
        proj.close()


def test_kept_runs_follow_the_retention_rule(tmp_path: Path, mini_session: Path) -> None:
    proj = _imported(tmp_path, mini_session)
    try:
        for kv in (200, 120, 250, 300):
            proj.set_params("import_movies", {"voltage_kV": kv})
            run_to_end(StepRun(proj, "import_movies"))
        st = proj.data.steps["import_movies"]
        assert proj.data.settings.keep_runs == 3 and len(st.history) == 2
        assert {f"steps/import_movies/{n}" for n in run_dirs(proj.dir, "import_movies")} == \
            {st.run_dir} | {h.run_dir for h in st.history}
        # back to a kept value: restored at once, nothing computed
        stale = proj.set_params("import_movies", {"voltage_kV": 250})
        assert stale == [] and proj.is_up_to_date("import_movies")
        assert proj.data.steps["import_movies"].metrics["n_series"] == 2
        # a smaller budget drops the oldest runs (files shared with the current run are not counted)
        n, used = proj.kept_runs()
        assert n == 2 and used > 0
        assert proj.set_retention(budget_GB=0.0) == []
        assert proj.data.steps["import_movies"].history == [] and len(run_dirs(proj.dir, "import_movies")) == 1
        proj.set_retention(keep_runs=1, budget_GB=20.0)
        run_to_end(StepRun(proj, "import_movies"))
        assert len(run_dirs(proj.dir, "import_movies")) == 1
    finally:
        proj.close()


def test_a_run_finished_but_not_recorded_is_adopted(tmp_path: Path, mini_session: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    proj = _imported(tmp_path, mini_session)
    first = proj.data.steps["import_movies"].run_dir
    proj.set_params("import_movies", {"voltage_kV": 200})

    def killed(self, step_id, rec):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt  # the program stops between the rename and the save

    monkeypatch.setattr(Project, "record_run", killed)
    with pytest.raises(KeyboardInterrupt):
        run_to_end(StepRun(proj, "import_movies"))
    proj.close()
    monkeypatch.undo()
    raw = saved(tmp_path / "p")["steps"]["import_movies"]
    assert raw["status"] == "running" and raw["run_dir"] == first
    finished = [n for n in run_dirs(tmp_path / "p", "import_movies") if f"steps/import_movies/{n}" != first]
    assert len(finished) == 1 and not finished[0].endswith(".partial")
    with Project.open(tmp_path / "p") as again:
        st = again.data.steps["import_movies"]
        assert st.status == "done" and st.run_dir == f"steps/import_movies/{finished[0]}"
        assert st.metrics["n_series"] == 2 and again.is_up_to_date("import_movies")
        assert [h.run_dir for h in st.history] == [first]
        assert any("recorded 1 run" in n for n in again.notes)


def test_leftovers_of_killed_programs_are_cleaned_on_open(tmp_path: Path, mini_session: Path) -> None:
    proj = _imported(tmp_path, mini_session)
    proj.close()
    d = tmp_path / "p"
    (d / "steps" / "import_movies" / "run-20260101-000000-000001.partial" / "previews").mkdir(parents=True)
    (d / "steps" / "import_movies" / "run-20260101-000000-000002.deleting" / "previews").mkdir(parents=True)
    (d / "project.json.abc123.tmp").write_text("{")
    (d / "project.json.bak.tmp").write_text("{")
    (d / "steps" / "import_movies" / "tilt_series.json.tmp").write_text("{")
    (d / "notes.tmp").write_text("the user's file: not ours")
    with Project.open(d) as again:
        assert any("removed 2 unfinished (or half-deleted) run folder" in n for n in again.notes)
        assert any("temporary file" in n for n in again.notes)
    left = sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.name.endswith((".tmp", ".partial", ".deleting")))
    assert left == ["notes.tmp"]
    # a read-only open (status while another program runs) removes nothing
    (d / "project.json.x.tmp").write_text("{")
    Project.open(d, readonly=True)
    assert (d / "project.json.x.tmp").exists()


# ---------------------------------------------------------------------------------------------------------------
# portable projects
# ---------------------------------------------------------------------------------------------------------------


def test_a_project_moved_with_its_data_opens_and_resumes_without_a_re_browse(
        tiny_project_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    project = copy_root(tiny_project_root, tmp_path / "a")
    before = statuses(project)
    raw = saved(project)
    assert raw["data_paths"]["import_movies.files_dir"]["rel"] == "../data"
    os.rename(tmp_path / "a", tmp_path / "b")
    moved = tmp_path / "b" / "project"
    assert main(["status", str(moved)]) == 0
    out = capsys.readouterr().out
    assert "data missing" not in out
    with Project.open(moved) as proj:
        assert proj.missing_data == []
        assert proj.params("import_movies").files_dir == str(tmp_path / "b" / "data")
        assert proj.data.data_paths["import_movies.files_dir"].abs == str(tmp_path / "b" / "data")
        assert any("found at" in n for n in proj.notes)
    assert statuses(moved) == before
    # resume: a step that reads the moved project's own files reruns with identical results
    assert main(["run", str(moved), "--only", "xray_erase"]) == 0
    assert statuses(moved) == before


def test_a_project_moved_with_its_data_resumes_reading_the_movies(tiny_dataset: Path, tmp_path: Path) -> None:
    shutil.copytree(tiny_dataset / "data", tmp_path / "a" / "data")
    from tomoguide import synth
    from tomoguide.demo import demo_params

    Project.create(tmp_path / "a" / "project", params=demo_params(tmp_path / "a" / "data",
                                                                  synth.PRESETS["tiny"])).close()
    assert main(["run", str(tmp_path / "a" / "project"), "--until", "import_movies"]) == 0
    os.rename(tmp_path / "a", tmp_path / "b")
    assert main(["run", str(tmp_path / "b" / "project"), "--until", "motion_ctf"]) == 0


def test_data_moved_alone_are_asked_for_once_and_checked(tmp_path: Path, mini_session: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    proj = Project.create(tmp_path / "p", params={"import_movies": {"files_dir": str(mini_session)}})
    proj.close()
    new_place = tmp_path / "disk2" / "session"
    shutil.move(mini_session, new_place)
    assert main(["run", str(tmp_path / "p"), "--until", "import_movies"]) == 2
    line = capsys.readouterr().err
    assert str(mini_session) in line and "tomoguide relocate" in line
    assert main(["status", str(tmp_path / "p")]) == 0
    assert "data missing" in capsys.readouterr().out
    # a folder with other data is refused, naming what differs
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(next(new_place.glob("TS_01*.mdoc")), other)
    assert main(["relocate", str(tmp_path / "p"), "--data", str(other)]) == 2
    err = capsys.readouterr().err
    assert "not the same data" in err and "TS_02.mrc.mdoc missing" in err
    assert main(["relocate", str(tmp_path / "p"), "--data", str(new_place)]) == 0
    assert main(["run", str(tmp_path / "p"), "--until", "import_movies"]) == 0
    with Project.open(tmp_path / "p", readonly=True) as again:
        assert again.missing_data == [] and again.is_up_to_date("import_movies")
        assert again.params("import_movies").files_dir == str(new_place.resolve())


def test_the_data_changed_in_place_make_the_import_stale(tmp_path: Path, mini_session: Path) -> None:
    proj = _imported(tmp_path, mini_session)
    proj.close()
    mdoc = mini_session / "TS_02.mrc.mdoc"
    mdoc.write_text(mdoc.read_text().replace("ExposureDose = 3.0", "ExposureDose = 2.5"))
    with Project.open(tmp_path / "p") as again:
        assert not again.is_up_to_date("import_movies")
        assert any("TS_02.mrc.mdoc differs" in n for n in again.notes)


# ---------------------------------------------------------------------------------------------------------------
# the backup
# ---------------------------------------------------------------------------------------------------------------


def test_use_backup_opens_a_damaged_project(tmp_path: Path, mini_session: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    proj = _imported(tmp_path, mini_session)
    proj.close()
    path = tmp_path / "p" / PROJECT_FILE
    damaged = path.read_bytes()[:200]
    path.write_bytes(damaged)
    assert main(["status", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert "corrupt" in err and "--use-backup" in err  # the option the message advertises exists:
    assert main(["status", str(tmp_path / "p"), "--use-backup"]) == 0
    assert "import_movies" in capsys.readouterr().out
    assert main(["run", str(tmp_path / "p"), "--until", "import_movies", "--use-backup"]) == 0
    assert json.loads(path.read_text())["steps"]["import_movies"]["status"] == "done"
    # the damaged file is kept aside for a look; the backup's "running" state adopted the finished run
    assert (tmp_path / "p" / (PROJECT_FILE + ".damaged")).read_bytes() == damaged
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ProjectError, match="no backup"):
        Project.open(empty, use_backup=True)


def test_a_hard_linked_file_is_not_hashed_again(small_workflow: None, tmp_path: Path, mini_session: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A stack passed on by a hard link keeps the digest recorded by the run that wrote it (run.json)."""
    from tomoguide import integrity

    proj = _imported(tmp_path, mini_session)
    try:
        hashed: list[str] = []
        original = integrity.content_digest
        monkeypatch.setattr(integrity, "content_digest", lambda p: hashed.append(Path(p).name) or original(p))
        run_to_end(StepRun(proj, "linker"))
        assert "linked.mrc" not in hashed
        st = proj.data.steps["linker"]
        run_json = json.loads((proj.dir / st.run_dir / "run.json").read_text())
        src = next((proj.dir / proj.data.steps["import_movies"].run_dir / "previews").glob("*.mrc"))
        assert run_json["digests"]["linked.mrc"] == original(src)
        assert st.content_hash is not None and proj.is_up_to_date("linker")
    finally:
        proj.close()
