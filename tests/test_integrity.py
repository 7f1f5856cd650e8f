"""Tampered and damaged projects (issue 15): nothing is written or deleted outside the step's own run folder, and
every damaged or tampered record is refused with one line ``FILE: field: problem`` naming it.

Each test works on a copy of a tiny project run to the end (``tiny_project_root``: ROOT/data and ROOT/project).
The attacks are made *consistent* where it matters (the project file's manifest is updated to match the
tampered record), so that the layer under test — the record loader, the run-folder checks, the write guard —
is the one that must refuse, not an earlier one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tomoguide.cli import main
from tomoguide.integrity import content_digest, is_record_file
from tomoguide.project import PROJECT_FILE, Project, ProjectError


def copy_root(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst / "project"


def saved(project: Path) -> dict:
    return json.loads((project / PROJECT_FILE).read_text())


def write_saved(project: Path, raw: dict) -> None:
    (project / PROJECT_FILE).write_text(json.dumps(raw, indent=1))


def tamper(project: Path, step_id: str, name: str, data: bytes, *, consistent: bool = True) -> Path:
    """Replace file ``name`` of the step's current run by ``data``; ``consistent``: also fix the project file's
    manifest so that the run still looks intact (an attacker who edits both)."""
    raw = saved(project)
    st = raw["steps"][step_id]
    f = project / st["run_dir"] / name
    f.unlink()  # never write through a hard link shared with another run
    f.write_bytes(data)
    if consistent:
        st["manifest"][name] = [len(data), content_digest(f)] if is_record_file(name, len(data)) else [len(data)]
        write_saved(project, raw)
    return f


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path below ``root`` with its size and modification time (to prove nothing changed)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_dir() and not p.is_symlink():
            continue
        st = p.lstat()
        out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


def need_done(project: Path, *step_ids: str) -> None:
    """Skip when a step of the session's tiny project did not finish (a later step failing in the working tree
    must not hide the tests of the earlier ones)."""
    steps = saved(project)["steps"]
    for sid in step_ids:
        if steps[sid]["status"] != "done":
            pytest.fail(f"the tiny project's {sid} did not finish: {steps[sid].get('error')}")


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    errors = [line for line in err if line.startswith("tomoguide: error:")]
    assert len(errors) == 1, err
    return errors[0]


# ---------------------------------------------------------------------------------------------------------------
# names from records
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad_name", ["/ELSEWHERE/TS_01_000_0.0", "../../../../ELSEWHERE/TS_01_000_0.0",
                                      "..", "TS_01\\..\\x", "TS\x0001", "C:TS_01"])
def test_a_series_name_that_is_a_path_is_refused_and_nothing_outside_is_written(
        tiny_project_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], bad_name: str) -> None:
    """The attack of the issue: a series name read from series.json used as an output file name. The movie-like
    file outside the project stays untouched; the record is named with its field; its step must run again."""
    project = copy_root(tiny_project_root, tmp_path / "root")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    movie = elsewhere / "TS_01_000_0.0.mrc"
    movie.write_bytes(b"raw movie, not to be overwritten")
    name = bad_name.replace("ELSEWHERE", str(elsewhere).lstrip("/"))
    rec = project / saved(project)["steps"]["motion_ctf"]["run_dir"] / "series.json"
    data = json.loads(rec.read_text())
    data["series"][0]["name"] = name
    tamper(project, "motion_ctf", "series.json", json.dumps(data).encode())
    outside_before = tree(tmp_path / "elsewhere")
    steps_before = tree(project / "steps")

    assert main(["run", str(project), "--only", "xray_erase"]) == 2
    line = one_error_line(capsys)
    assert str(rec) in line and "series.0.name" in line and "run “" in line
    assert tree(tmp_path / "elsewhere") == outside_before and movie.read_bytes().startswith(b"raw movie")
    assert tree(project / "steps") == steps_before  # refused before anything was written
    st = saved(project)["steps"]["motion_ctf"]
    assert st["status"] == "stale" and "series.0.name" in st["stale_reason"]


def test_a_record_edited_without_its_manifest_is_not_up_to_date(tiny_project_root: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    project = copy_root(tiny_project_root, tmp_path / "root")
    rec = project / saved(project)["steps"]["motion_ctf"]["run_dir"] / "series.json"
    data = json.loads(rec.read_text())
    data["series"][0]["name"] = "/tmp/TS_01"
    tamper(project, "motion_ctf", "series.json", json.dumps(data).encode(), consistent=False)
    assert main(["run", str(project), "--only", "xray_erase"]) == 2
    line = one_error_line(capsys)
    assert "Frame alignment" in line and str(rec) in line and "on disk" in line
    assert main(["status", str(project), "--json"]) == 0
    steps = {s["id"]: s for s in json.loads(capsys.readouterr().out)["steps"]}
    assert steps["motion_ctf"]["status"] == "stale" and steps["import_movies"]["status"] == "done"


# ---------------------------------------------------------------------------------------------------------------
# run folders and outputs in the project file
# ---------------------------------------------------------------------------------------------------------------

RUN_DIRS = ["steps", ".", "..", "/tmp", "steps/import_movies", "steps/motion_ctf/run-20260101-000000-000000",
            "steps/import_movies/run-1/../../..", "steps/import_movies/run-1.partial", "", "steps//import_movies"]


def test_tampered_run_dir_values_are_refused_and_nothing_is_deleted(tiny_project_root: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """``run_dir = "steps"`` once made a rerun delete every output; every such value is refused when the project
    file is read, naming the field, and not a file is deleted (inside or outside the project)."""
    project = copy_root(tiny_project_root, tmp_path / "root")
    good = (project / PROJECT_FILE).read_bytes()
    (tmp_path / "sentinel.txt").write_text("outside")
    before = tree(tmp_path)
    for value in RUN_DIRS + ["/" + str(project / "steps").lstrip("/")]:
        raw = json.loads(good)
        raw["steps"]["import_movies"]["run_dir"] = value
        write_saved(project, raw)
        assert main(["run", str(project), "--only", "import_movies"]) == 2, value
        line = one_error_line(capsys)
        assert "steps.import_movies.run_dir" in line and "nothing was run" in line, (value, line)
        after = tree(tmp_path)
        after.pop("root/project/project.json")
        expected = dict(before)
        expected.pop("root/project/project.json")
        assert after == expected, value
    # a kept run (history) pointing outside is refused the same way
    raw = json.loads(good)
    raw["steps"]["xray_erase"]["history"] = [{"run_dir": "steps", "outputs": {}}]
    write_saved(project, raw)
    with pytest.raises(ProjectError, match=r"steps\.xray_erase\.history\.0\.run_dir"):
        Project.open(project)


def test_the_runners_deletion_guard_refuses_everything_but_a_run_folder(tiny_project_root: Path,
                                                                         tmp_path: Path) -> None:
    """Defence in depth below the file check: the one function that deletes run folders refuses the same values
    (e.g. a state changed in memory), and kept runs beyond the retention rule are deleted through it."""
    project = copy_root(tiny_project_root, tmp_path / "root")
    before = tree(tmp_path)
    with Project.open(project) as proj:
        for value in RUN_DIRS + [str(project / "steps"), "steps/import_movies/../motion_ctf/run-x"]:
            with pytest.raises(ProjectError):
                proj.remove_run("import_movies", value)
        current = proj.data.steps["import_movies"].run_dir
        with pytest.raises(ProjectError, match="current run"):
            proj.remove_run("import_movies", current)
        assert proj.delete_runs([("import_movies", "steps"), ("import_movies", "..")]) != []
    after = tree(tmp_path)
    for p in ("root/project/project.json", "root/project/project.json.bak"):
        after.pop(p, None)
        before.pop(p, None)
    assert after == before


def test_outputs_pointing_outside_their_run_folder_are_refused(tiny_project_root: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    project = copy_root(tiny_project_root, tmp_path / "root")
    good = (project / PROJECT_FILE).read_bytes()
    for value in ["../../elsewhere/series.json", "/etc/passwd", "steps/import_movies/run-x/tilt_series.json"]:
        raw = json.loads(good)
        raw["steps"]["motion_ctf"]["outputs"]["series"] = value
        write_saved(project, raw)
        assert main(["status", str(project)]) == 2
        assert "steps.motion_ctf.outputs.series" in one_error_line(capsys)


# ---------------------------------------------------------------------------------------------------------------
# symbolic links
# ---------------------------------------------------------------------------------------------------------------


def test_a_step_folder_linked_out_of_the_project_is_not_written_through(tiny_project_root: Path, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    project = copy_root(tiny_project_root, tmp_path / "root")
    outside = tmp_path / "outside"
    shutil.copytree(project / "steps" / "xray_erase", outside)
    shutil.rmtree(project / "steps" / "xray_erase")
    os.symlink(outside, project / "steps" / "xray_erase")
    before = tree(outside)
    assert main(["run", str(project), "--only", "xray_erase"]) == 2
    line = one_error_line(capsys)
    assert "symbolic link" in line and "xray_erase" in line
    assert tree(outside) == before
    # the steps folder itself linked out: the same
    shutil.move(project / "steps", tmp_path / "steps_elsewhere")
    os.symlink(tmp_path / "steps_elsewhere", project / "steps")
    before = tree(tmp_path / "steps_elsewhere")
    assert main(["run", str(project), "--only", "import_movies"]) == 2
    assert "symbolic link" in one_error_line(capsys)
    assert tree(tmp_path / "steps_elsewhere") == before


def test_a_record_replaced_by_a_link_is_refused(tiny_project_root: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    project = copy_root(tiny_project_root, tmp_path / "root")
    rec = project / saved(project)["steps"]["motion_ctf"]["run_dir"] / "series.json"
    crafted = tmp_path / "crafted.json"
    crafted.write_bytes(rec.read_bytes())
    rec.unlink()
    os.symlink(crafted, rec)
    assert main(["run", str(project), "--only", "xray_erase"]) == 2
    assert "link" in one_error_line(capsys)


# ---------------------------------------------------------------------------------------------------------------
# damaged records: FILE: field: problem, exit 2, the producing step marked to run again
# ---------------------------------------------------------------------------------------------------------------

RECORDS = [  # (producing step, file in its run folder, a step that reads it)
    ("import_movies", "tilt_series.json", "motion_ctf"),
    ("motion_ctf", "series.json", "xray_erase"),
    ("extract", "particles.json", "initial_model"),
    ("refine", "average.json", "extract_fine"),
    ("pick", "particles.star", "extract"),
]


def _damages(good: bytes, name: str) -> dict[str, bytes]:
    out = {"empty": b"", "not UTF-8": b"\xff\xfe\x00garbage\x81" * 10}
    if name.endswith(".json"):
        out["truncated"] = good[: len(good) // 2]
        raw = json.loads(good)
        first = next(iter(raw))
        raw[first] = "not what it should be"
        out["wrong type"] = json.dumps(raw).encode()
    return out


@pytest.mark.parametrize("producer,name,reader", RECORDS)
def test_damaged_records_are_one_line_naming_the_file(tiny_project_root: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str], producer: str, name: str,
                                                     reader: str) -> None:
    need_done(tiny_project_root / "project", producer)
    project = copy_root(tiny_project_root, tmp_path / "root")
    clean = (project / PROJECT_FILE).read_bytes()
    path = project / saved(project)["steps"][producer]["run_dir"] / name
    good = path.read_bytes()
    for what, data in _damages(good, name).items():
        (project / PROJECT_FILE).write_bytes(clean)
        f = tamper(project, producer, name, data)
        assert main(["run", str(project), "--only", reader]) == 2, what
        line = one_error_line(capsys)
        assert str(f) in line, (what, line)
        assert "Traceback" not in line
        st = saved(project)["steps"][producer]
        assert st["status"] == "stale" and str(f) in st["stale_reason"], what
        # status shows it too, and the file was not touched by the refusal
        assert main(["status", str(project)]) == 0
        assert "stale" in capsys.readouterr().out
        assert f.read_bytes() == data
        path.unlink()
        path.write_bytes(good)


def test_an_empty_record_is_not_up_to_date(tiny_project_root: Path, tmp_path: Path) -> None:
    """Only its existence was checked before: an empty tilt_series.json counted as "up to date"."""
    project = copy_root(tiny_project_root, tmp_path / "root")
    f = tamper(project, "import_movies", "tilt_series.json", b"")
    with Project.open(project, readonly=True) as proj:
        assert not proj.is_up_to_date("import_movies")
        reason = proj.why_not_up_to_date("import_movies", ignore_status=True) or ""
        assert str(f) in reason and "empty" in reason
        assert proj.first_not_done() == "import_movies"
