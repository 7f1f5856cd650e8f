"""Kills and races (issue 15): SIGKILLs at random moments of runs, saves and ``tomoguide new`` never leave an
unreadable project, never lose a finished step, leave nothing behind after the next open, and the project
resumes to the same end state as an uninterrupted run; simultaneous starts never run at once.

``test_kill_runs_saves_and_new_many`` (≥ 50 kills) is marked slow; the fast variant runs the same code with
fewer kills in CI. The 50 pairs of simultaneous starts take a few seconds and always run.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tomoguide.project import PROJECT_FILE, Project, ProjectLockedError, load_project_file

UNTIL = "reconstruct"


def _run_cli(*args: str, stderr: int = subprocess.DEVNULL) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "tomoguide", *args], stdout=subprocess.DEVNULL,
                            stderr=stderr, text=True)


def _leftovers(project: Path) -> list[str]:
    """Temporaries, unfinished run folders and run folders that no step records (after an open: none)."""
    out = [p.name for p in project.iterdir() if p.name.endswith(".tmp")]
    raw = json.loads((project / PROJECT_FILE).read_text())
    steps = project / "steps"
    if steps.is_dir():
        for sd in steps.iterdir():
            st = raw["steps"].get(sd.name, {})
            known = {st.get("run_dir")} | {h["run_dir"] for h in st.get("history", [])}
            for run in sd.iterdir():
                if run.name.endswith((".partial", ".tmp", ".deleting")) or f"steps/{sd.name}/{run.name}" not in known:
                    out.append(f"{sd.name}/{run.name}")
    return out


def _up_to_date(project: Path) -> dict[str, str | None]:
    """Steps up to date -> their content hash (opening writable: cleans, adopts, interrupted reruns kept)."""
    with Project.open(project) as proj:
        return {sid: proj.data.steps[sid].content_hash for sid in proj.data.steps if proj.is_up_to_date(sid)}


def _fresh(data: Path, root: Path) -> Path:
    """A new project ``root/project`` on ``data`` (one data folder for the projects compared: the import's record
    holds the movies' absolute paths)."""
    from tomoguide import synth
    from tomoguide.demo import demo_params

    Project.create(root / "project", params=demo_params(data, synth.PRESETS["tiny"])).close()
    return root / "project"


_SAVER = textwrap.dedent("""
    import sys
    from tomoguide.project import Project
    proj = Project.open(sys.argv[1])
    print("ready", flush=True)
    i = 0
    while True:  # saves that change no step's identity (a name, metrics): nothing may become stale
        i += 1
        proj.data.name = f"saved {i} times"
        proj.data.steps["import_movies"].metrics["saves"] = [i] * 2000
        proj.save()
""")


def kill_campaign(tiny_dataset: Path, tmp_path: Path, n_kills: int, seed: int) -> dict[str, int]:
    """``n_kills`` SIGKILLs of live programs at random moments of ``tomoguide run`` (some with --force: reruns of
    finished steps; always once every step is done), of a program saving in a loop, and of ``tomoguide new``;
    checks after every kill; then resumes and compares with an uninterrupted run. Returns counts of what was
    killed (``killed``: programs still running when the signal came) and checked."""
    from tomoguide.cli import run_steps

    rng = random.Random(seed)
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset / "data", data)
    reference = _fresh(data, tmp_path / "reference")
    assert run_steps(reference, until=UNTIL, quiet=True) == 0
    expected = _up_to_date(reference)
    assert UNTIL in expected
    project = _fresh(data, tmp_path / "killed")
    counts = {"run": 0, "run_force": 0, "save": 0, "new": 0, "new_complete": 0, "finished_in_between": 0,
              "killed": 0}
    done_before: dict[str, str | None] = {}
    k = -1
    while counts["killed"] < n_kills:
        k += 1
        assert k < 4 * n_kills, counts
        kind = rng.choice(["run", "run", "run", "run_force", "save", "new"])
        if kind == "run" and UNTIL in done_before:
            kind = "run_force"  # nothing left to do: rerun finished steps instead
        if kind == "new":
            target = tmp_path / f"new_{k}"
            child = _run_cli("new", str(target), "--movies", str(data))
            time.sleep(rng.uniform(0.2, 2.5))
            counts["killed" if child.poll() is None else "finished_in_between"] += 1
            child.send_signal(signal.SIGKILL)
            child.wait()
            counts["new"] += 1
            if (target / PROJECT_FILE).exists():  # all or nothing: complete, with the movie folder set
                made = load_project_file(target / PROJECT_FILE)
                assert made.steps["import_movies"].params["files_dir"] == str(data)
                counts["new_complete"] += 1
                Project.open(target).close()
            else:  # nothing made: `new` works again on the same folder
                again = _run_cli("new", str(target), "--movies", str(data),
                                 stderr=subprocess.PIPE)
                _, err = again.communicate(timeout=120)
                assert again.returncode == 0, err
            assert not (target / "project.lock").exists()
            continue
        if kind == "save":
            child = subprocess.Popen([sys.executable, "-c", _SAVER, str(project)], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
            assert child.stdout is not None and child.stdout.readline().strip() == "ready"
            time.sleep(rng.uniform(0.0, 0.3))
        else:
            args = ["run", str(project), "--until", UNTIL] + (["--force"] if kind == "run_force" else [])
            child = _run_cli(*args)
            time.sleep(rng.uniform(0.5, 7.0))
        counts["killed" if child.poll() is None else "finished_in_between"] += 1
        child.send_signal(signal.SIGKILL)
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
        counts[kind] += 1
        load_project_file(project / PROJECT_FILE)  # never raises: readable at every moment
        now = _up_to_date(project)
        lost = [s for s in done_before if s not in now]
        assert lost == [], f"kill {k} ({kind}) lost finished steps {lost}"
        assert _leftovers(project) == [], f"kill {k} ({kind}) left {_leftovers(project)}"
        done_before = now
    assert run_steps(project, until=UNTIL, quiet=True) == 0
    final = _up_to_date(project)
    assert final == expected  # the same content, step by step, as the uninterrupted run
    assert _leftovers(project) == []
    return counts


def test_kill_runs_saves_and_new_fast(tiny_dataset: Path, tmp_path: Path) -> None:
    counts = kill_campaign(tiny_dataset, tmp_path, n_kills=8, seed=15)
    assert counts["killed"] == 8


@pytest.mark.slow
def test_kill_runs_saves_and_new_many(tiny_dataset: Path, tmp_path: Path) -> None:
    counts = kill_campaign(tiny_dataset, tmp_path, n_kills=55, seed=2026)
    print(json.dumps(counts))
    assert counts["killed"] == 55
    assert counts["run"] + counts["run_force"] >= 25 and counts["new"] >= 5 and counts["save"] >= 5


# ---------------------------------------------------------------------------------------------------------------
# simultaneous starts
# ---------------------------------------------------------------------------------------------------------------

_RACER = textwrap.dedent("""
    import os, sys, time
    from tomoguide.project import Project, ProjectLockedError
    log = sys.argv[2]
    print("ready", flush=True)
    for line in sys.stdin:  # one line per round: everybody starts at once
        if line.strip() == "stop":
            break
        try:
            proj = Project.open(sys.argv[1])
        except ProjectLockedError as exc:
            with open(log, "a") as fh:
                fh.write(f"{os.getpid()} refused {time.monotonic_ns()} {str(exc).replace(chr(10), ' ')}\\n")
            print("done", flush=True)
            continue
        t0 = time.monotonic_ns()
        proj.set_params("xray_erase", {"peak_criterion": 10.0 + (os.getpid() % 7)})  # the "run": a save
        time.sleep(0.03)
        t1 = time.monotonic_ns()
        proj.close()
        with open(log, "a") as fh:
            fh.write(f"{os.getpid()} ran {t0} {t1}\\n")
        print("done", flush=True)
""")


def race(project: Path, log: Path, n_pairs: int) -> tuple[int, int]:
    """Two programs start ``n_pairs`` times at the same moment; returns (runs, refusals)."""
    kids = [subprocess.Popen([sys.executable, "-c", _RACER, str(project), str(log)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        for kid in kids:
            assert kid.stdout is not None and kid.stdout.readline().strip() == "ready"
        for _ in range(n_pairs):
            for kid in kids:
                assert kid.stdin is not None
                kid.stdin.write("go\n")
            for kid in kids:
                kid.stdin.flush()  # type: ignore[union-attr]
            for kid in kids:
                assert kid.stdout is not None and kid.stdout.readline().strip() == "done", kid.stderr.read()
        for kid in kids:
            kid.stdin.write("stop\n")  # type: ignore[union-attr]
            kid.stdin.flush()  # type: ignore[union-attr]
    finally:
        for kid in kids:
            kid.wait(timeout=60)
            for pipe in (kid.stdin, kid.stdout, kid.stderr):
                if pipe is not None:
                    pipe.close()
    lines = log.read_text().splitlines()
    ran = sorted((int(t0), int(t1), pid) for pid, kind, t0, t1 in
                 (line.split()[:4] for line in lines if line.split()[1] == "ran"))
    refused = [line for line in lines if line.split()[1] == "refused"]
    for (a0, a1, pa), (b0, b1, pb) in zip(ran, ran[1:]):
        assert b0 >= a1, f"{pa} and {pb} held the project at the same time"
    pids = {str(k.pid) for k in kids}
    for line in refused:  # every refusal names the other program
        me = line.split()[0]
        other = (pids - {me}).pop()
        assert f"pid {other}" in line and "open in another tomoguide" in line, line
    assert len(ran) + len(refused) == 2 * n_pairs
    return len(ran), len(refused)


def test_simultaneous_starts(tmp_path: Path) -> None:
    """50 pairs of programs opening the project for a run at the same moment: never both at once (about 5 s)."""
    Project.create(tmp_path / "p").close()
    ran, refused = race(tmp_path / "p", tmp_path / "log.txt", 50)
    print(json.dumps({"pairs": 50, "runs": ran, "refused": refused}))
    assert ran >= 50 and refused >= 5  # enough pairs collided (else the test proves nothing)
    assert not (tmp_path / "p" / "project.lock").exists()


def test_simultaneous_command_line_runs(tmp_path: Path, mini_session: Path) -> None:
    """Two `tomoguide run` started together: one runs, the other is refused (or runs after it), never both at once;
    the project ends consistent."""
    Project.create(tmp_path / "p", params={"import_movies": {"files_dir": str(mini_session)}}).close()
    for _ in range(3):
        kids = [_run_cli("run", str(tmp_path / "p"), "--only", "import_movies", stderr=subprocess.PIPE)
                for _ in range(2)]
        results = [(k.communicate(timeout=300)[1], k.returncode) for k in kids]
        results = [(code, err) for err, code in results]
        assert all(code in (0, 2) for code, _ in results) and any(code == 0 for code, _ in results), results
        for code, err in results:
            if code == 2:
                assert "open in another tomoguide" in err
    with Project.open(tmp_path / "p") as proj:
        assert proj.is_up_to_date("import_movies")
    assert _leftovers(tmp_path / "p") == []
    assert not (tmp_path / "p" / "project.lock").exists()
    with pytest.raises(ProjectLockedError), Project.open(tmp_path / "p"):
        Project.open(tmp_path / "p")
