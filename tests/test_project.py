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


_HOLDER = textwrap.dedent("""
    import sys, time
    from tomoguide.project import Project
    proj = Project.open(sys.argv[1])
    print("ready", flush=True)
    time.sleep(60)
""")


def test_lock_refuses_second_writer_but_allows_readers(tmp_path: Path) -> None:
    from tomoguide.integrity import machine_id, process_start

    proj = Project.create(tmp_path / "p")
    lock = tmp_path / "p" / LOCK_FILE
    # a second writer (even in this process) is refused by the OS lock; breaking it is refused too
    with pytest.raises(ProjectLockedError) as err:
        Project.open(tmp_path / "p")
    assert "another tomoguide" in str(err.value) and str(os.getpid()) in str(err.value)
    assert not err.value.can_break
    with pytest.raises(ProjectLockedError):
        Project.open(tmp_path / "p", break_lock=True)
    ro = Project.open(tmp_path / "p", readonly=True)
    assert ro.data.steps.keys() == proj.data.steps.keys()
    proj.close()
    assert not lock.exists()

    # another program holds it: refused, naming its pid; once it is killed, the lock is taken over
    with subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path / "p")], stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True) as child:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        with pytest.raises(ProjectLockedError) as err:
            Project.open(tmp_path / "p")
        assert f"pid {child.pid}" in str(err.value)
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert json.loads(lock.read_text())["pid"] == child.pid  # the dead program's lock file is still there
    with Project.open(tmp_path / "p") as again:
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        del again

    me = {"host": "vm", "machine": machine_id(), "since": "2026-01-01T00:00:00+00:00", "command": "tomoguide run p"}
    parent = os.getppid()
    cases = {
        "dead pid": ({**me, "pid": 2**22 + 12345}, True),
        "pid reused by another process": ({**me, "pid": parent, "start": "boot:1"}, True),
        "empty file (killed while writing it)": (None, True),
        "alive, without the OS lock": ({**me, "pid": parent, "start": process_start(parent)}, False),
        "another machine": ({**me, "pid": 1234, "host": "cluster-node-7", "machine": "0" * 32}, False),
    }
    for what, (info, taken) in cases.items():
        lock.write_text("" if info is None else json.dumps(info))
        if taken:
            Project.open(tmp_path / "p").close()
            assert not lock.exists(), what
            continue
        with pytest.raises(ProjectLockedError) as err:
            Project.open(tmp_path / "p")
        msg = str(err.value)
        assert err.value.can_break and "--break-lock" in msg and f"pid {info['pid']}" in msg, what
        if info["host"] == "cluster-node-7":
            assert "cluster-node-7" in msg and "another machine" in msg
        with Project.open(tmp_path / "p", break_lock=True) as broken:  # what --break-lock does
            assert json.loads(lock.read_text())["pid"] == os.getpid()
            del broken


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
    assert leftovers == []  # every open removes the temporaries a killed save left
