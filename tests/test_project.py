"""The project file: atomic saves, lock, schema version, resume rule, stale marking, crash safety."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tomoguide.project import (
    BACKUP_FILE,
    LOCK_FILE,
    PROJECT_FILE,
    SCHEMA_VERSION,
    Project,
    ProjectError,
    ProjectLockedError,
    load_project_file,
)
from tomoguide.steps import registry


def test_create_open_roundtrip(tmp_path: Path) -> None:
    proj = Project.create(tmp_path / "p", params={"import_movies": {"files_dir": "/data", "voltage_kV": 200}})
    proj.close()
    raw = json.loads((tmp_path / "p" / PROJECT_FILE).read_text())
    assert raw["schema_version"] == SCHEMA_VERSION
    assert set(raw["steps"]) == set(registry.ids())
    again = Project.open(tmp_path / "p")
    assert again.params("import_movies").voltage_kV == 200
    assert again.params("import_movies").files_dir == "/data"
    assert again.data == proj.data or again.data.steps == proj.data.steps
    again.close()


def test_invalid_parameter_is_refused_and_nothing_changes(tmp_path: Path) -> None:
    with Project.create(tmp_path / "p") as proj:
        before = (tmp_path / "p" / PROJECT_FILE).read_text()
        with pytest.raises(Exception) as err:
            proj.set_params("import_movies", {"voltage_kV": -5})
        assert "voltage_kV" in str(err.value)
        with pytest.raises(Exception):
            proj.set_params("import_movies", {"no_such_field": 1})
        assert (tmp_path / "p" / PROJECT_FILE).read_text() == before
        assert proj.params("import_movies").voltage_kV == 300


def test_lock_refuses_second_writer_but_allows_readers(tmp_path: Path) -> None:
    proj = Project.create(tmp_path / "p")
    # a second program: simulate with a lock written by another live pid (our parent process)
    lock = tmp_path / "p" / LOCK_FILE
    info = json.loads(lock.read_text())
    info["pid"] = os.getppid()
    lock.write_text(json.dumps(info))
    with pytest.raises(ProjectLockedError) as err:
        Project.open(tmp_path / "p")
    assert "another tomoguide" in str(err.value)
    ro = Project.open(tmp_path / "p", readonly=True)
    assert ro.data.steps.keys() == proj.data.steps.keys()
    # a lock left by a dead program is taken over
    info["pid"] = 2**22 + 12345
    lock.write_text(json.dumps(info))
    Project.open(tmp_path / "p").close()


def test_corrupt_and_newer_files_give_clear_messages(tmp_path: Path) -> None:
    with Project.create(tmp_path / "p") as proj:
        proj.set_params("import_movies", {"voltage_kV": 200})  # a second save creates the backup
    path = tmp_path / "p" / PROJECT_FILE
    assert (tmp_path / "p" / BACKUP_FILE).exists()
    good = path.read_text()
    path.write_text(good[: len(good) // 2])
    with pytest.raises(ProjectError) as err:
        Project.open(tmp_path / "p")
    msg = str(err.value)
    assert str(path) in msg and "corrupt" in msg and "--use-backup" in msg
    recovered = Project.open(tmp_path / "p", use_backup=True)
    assert recovered.params("import_movies").voltage_kV == 300  # the state before the last change
    recovered.close()
    raw = json.loads(good)
    raw["schema_version"] = SCHEMA_VERSION + 1
    path.write_text(json.dumps(raw))
    with pytest.raises(ProjectError) as err:
        load_project_file(path)
    assert "newer tomoguide" in str(err.value) and "schema_version" in str(err.value)


def test_running_step_left_by_a_crash_is_interrupted(tmp_path: Path) -> None:
    with Project.create(tmp_path / "p") as proj:
        proj.data.steps["import_movies"].status = "running"
        proj.data.steps["import_movies"].owner_pid = 2**22 + 4321
        proj.save()
    with Project.open(tmp_path / "p") as again:
        assert again.data.steps["import_movies"].status == "interrupted"
        assert again.first_not_done() == "import_movies"


def test_paths_are_relative_so_projects_move(tmp_path: Path) -> None:
    with Project.create(tmp_path / "a") as proj:
        out = tmp_path / "a" / "steps" / "import_movies" / "run-1"
        out.mkdir(parents=True)
        (out / "x.json").write_text("{}")
        st = proj.data.steps["import_movies"]
        st.outputs = {"x": proj.relpath(out / "x.json")}
        st.status = "done"
        st.hash = proj.step_hash("import_movies")
        proj.save()
        assert not Path(st.outputs["x"]).is_absolute()
    os.rename(tmp_path / "a", tmp_path / "b")
    with Project.open(tmp_path / "b") as moved:
        assert moved.is_up_to_date("import_movies")
        assert moved.output_path("import_movies", "x").read_text() == "{}"
        # outputs deleted on disk: the step is no longer up to date and is flagged
        (tmp_path / "b" / "steps" / "import_movies" / "run-1" / "x.json").unlink()
    with Project.open(tmp_path / "b") as moved:
        assert moved.data.steps["import_movies"].status == "stale"
        assert "missing" in (moved.data.steps["import_movies"].stale_reason or "")


_CHILD = textwrap.dedent("""
    import sys, random
    from tomoguide.project import Project
    proj = Project.open(sys.argv[1])
    print("ready", flush=True)
    i = 0
    while True:
        i += 1
        proj.data.steps["import_movies"].metrics = {"i": i, "filler": [random.random() for _ in range(20000)]}
        proj.set_params("import_movies", {"voltage_kV": 100 + i % 200})
""")


def test_sigkill_while_saving_never_leaves_an_unreadable_project(tmp_path: Path) -> None:
    """50 times: a program saving in a loop is killed with SIGKILL at a random moment; the file stays readable."""
    Project.create(tmp_path / "p").close()
    rng = random.Random(1234)
    seen_values = set()
    for _ in range(50):
        with subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path / "p")], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True) as child:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready"
            time.sleep(rng.uniform(0.0, 0.15))
            child.send_signal(signal.SIGKILL)
            child.wait()
        data = load_project_file(tmp_path / "p" / PROJECT_FILE)  # never raises
        seen_values.add(data.steps["import_movies"].params["voltage_kV"])
        with Project.open(tmp_path / "p") as proj:  # the dead program's lock is taken over
            assert proj.params("import_movies").voltage_kV >= 100
    leftovers = [p.name for p in (tmp_path / "p").iterdir() if p.name.endswith(".tmp")]
    assert len(seen_values) > 5, "the kills should land at different moments of the save loop"
    assert len(leftovers) <= 50  # stray temporaries may remain after a kill, but never replace the file
