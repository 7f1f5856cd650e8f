"""``tomoguide --selftest`` (app/pages/selftest.py), run as a user runs it: in a subprocess, without a display.

The subprocess runs with ``-X importtime``, so the same run also tells which modules the self-test imports:
none of them may be in the PyInstaller recipe's ``excludes`` (packaging/tomoguide.spec), and the vispy backend
it used must be among the recipe's hidden imports — otherwise the frozen bundle would fail where the source
install works.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tomoguide import __version__
from tomoguide.pages import selftest

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "packaging" / "tomoguide.spec"
RUN_TIMEOUT_S = 180


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    tmp_dir: Path
    config_dir: Path


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM", "TOMOGUIDE_SELFTEST_TIMEOUT_S",
                        "TOMOGUIDE_SELFTEST_3D")}
    (tmp / "tmp").mkdir(parents=True, exist_ok=True)
    (tmp / "config").mkdir(parents=True, exist_ok=True)
    env.update(TMPDIR=str(tmp / "tmp"), TOMOGUIDE_CONFIG_DIR=str(tmp / "config"), **extra)
    return env


def _run(tmp: Path, *python_flags: str, **extra_env: str) -> Run:
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, *python_flags, "-m", "tomoguide", "--selftest"], cwd=tmp,
                          env=_env(tmp, **extra_env), capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    return Run(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - t0, tmp / "tmp", tmp / "config")


@pytest.fixture(scope="module")
def selftest_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """One ``python -X importtime -m tomoguide --selftest`` with no display, shared by the tests below."""
    return _run(tmp_path_factory.mktemp("selftest"), "-X", "importtime")


def _fact(stdout: str, name: str) -> str:
    m = re.search(rf"^  {re.escape(name)}\s+(.*)$", stdout, re.MULTILINE)
    assert m, f"no {name!r} line in the report:\n{stdout}"
    return m.group(1)


def _imported_modules(stderr: str) -> set[str]:
    """Module names from ``-X importtime`` lines (``import time:   self |  cumulative |   name``), with every
    parent package of each (importing ``a.b.c`` imports ``a`` and ``a.b``; not every package gets a line)."""
    names = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name and name != "imported package":
                parts = name.split(".")
                names.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return names


def _spec_list(name: str) -> list[str]:
    """The literal strings of the list assigned to ``name`` in the spec (hiddenimports: its literal part)."""
    tree = ast.parse(SPEC.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return [n.value for n in ast.walk(node.value) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    raise AssertionError(f"{SPEC}: no {name} = [...]")


def test_selftest_passes_offscreen_and_reports(selftest_run: Run) -> None:
    from tomoguide import synth

    run = selftest_run
    assert run.returncode == 0, f"exit {run.returncode}\nstdout:\n{run.stdout}\nstderr (end):\n{run.stderr[-3000:]}"
    assert run.stdout.rstrip().endswith("tomoguide selftest: OK")
    # no display in the environment: the self-test chose the offscreen platform itself, before the QApplication
    assert _fact(run.stdout, "Qt platform") == "offscreen"
    assert "QT_QPA_PLATFORM=offscreen set by the self-test" in _fact(run.stdout, "display")
    versions = _fact(run.stdout, "versions")
    assert f"tomoguide {__version__}" in versions
    assert re.search(r"PySide6 6\.\d+\.\d+", versions) and re.search(r"numba \d+\.\d+", versions)
    assert "missing" not in versions
    # the data set matches the tiny preset: series TS_01.. and one movie per tilt from -max to +max
    p = synth.PRESETS["tiny"]
    n_tilts = 2 * round(p.max_tilt_deg / p.tilt_step_deg) + 1
    expected = ", ".join(f"TS_{i + 1:02d}: {n_tilts} movies" for i in range(p.n_series))
    assert _fact(run.stdout, "data set") == expected
    imp = _fact(run.stdout, "import")
    assert imp.startswith("done;") and f"preview: {p.n_series} series" in imp
    assert int(re.search(r"(\d+) progress messages", imp).group(1)) >= 2
    # phase times are numbers that add up to at most the total, which is at most the wall time of the process
    times = {m.group(1).strip(): float(m.group(2))
             for m in re.finditer(r"^  time (.+?)\s+([0-9.]+) s$", run.stdout, re.MULTILINE)}
    assert {"simulate", "open wizard", "import step", "total"} <= set(times)
    assert sum(v for k, v in times.items() if k != "total") <= times["total"] + 0.05
    assert times["total"] <= run.seconds
    # it cleaned up after itself and left the user's settings alone
    assert list(run.tmp_dir.iterdir()) == []
    assert not (run.config_dir / "tomoguide.ini").exists()
    assert not (run.config_dir / "recent_projects.json").exists()


def test_selftest_needs_nothing_the_bundle_leaves_out(selftest_run: Run) -> None:
    """What the self-test imports is not excluded by the PyInstaller recipe, and its vispy backend is collected."""
    assert selftest_run.returncode == 0
    imported = _imported_modules(selftest_run.stderr)
    assert {"tomoguide.pages.wizard", "tomoguide.steps.import_movies", "numba", "vispy"} <= imported
    optional = _spec_list("optional_excludes")  # libraries fall back when these are missing
    excludes = [x for x in _spec_list("excludes") if x not in optional]
    assert "tkinter" in excludes and "pyarrow" in optional  # the lists were parsed
    clash = sorted(m for m in imported for x in excludes if m == x or m.startswith(x + "."))
    assert clash == [], f"packaging/tomoguide.spec excludes modules that the program imports: {clash}"
    hidden = set(_spec_list("hiddenimports"))
    backends = {m for m in imported if m.startswith("vispy.app.backends._") and m.count(".") == 3}
    assert backends, "the self-test used no vispy backend"
    assert backends <= hidden, f"vispy backends used but not hidden-imported in the spec: {backends - hidden}"


def test_selftest_times_out_cleanly(tmp_path: Path) -> None:
    run = _run(tmp_path, TOMOGUIDE_SELFTEST_TIMEOUT_S="0.5")
    assert run.returncode == 1, run.stdout + run.stderr
    assert "tomoguide selftest: FAILED: timed out after 0.5 s" in run.stdout
    assert run.seconds < 30.0  # it stops, instead of finishing the work or hanging


@pytest.mark.parametrize("name, value", [("TOMOGUIDE_SELFTEST_3D", "maybe"),
                                         ("TOMOGUIDE_SELFTEST_TIMEOUT_S", "two minutes")])
def test_bad_settings_are_refused(name: str, value: str, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(name, value)
    assert selftest.run_selftest() == 1
    assert name in capsys.readouterr().err


def test_choose_qt_platform() -> None:
    env: dict[str, str] = {}
    assert selftest.choose_qt_platform(env) == "offscreen" and env == {"QT_QPA_PLATFORM": "offscreen"}
    for given in ({"DISPLAY": ":0"}, {"WAYLAND_DISPLAY": "wayland-0"}, {"QT_QPA_PLATFORM": "xcb"}):
        env = dict(given)
        assert selftest.choose_qt_platform(env) is None and env == given


def test_count_movies(tmp_path: Path) -> None:
    (tmp_path / "TS_01").mkdir()
    (tmp_path / "TS_02").mkdir()
    (tmp_path / "TS_03").mkdir()
    for name in ("TS_01_000_0.0.mrc", "TS_01_001_10.0.mrc", "TS_01.mdoc"):
        (tmp_path / "TS_01" / name).write_bytes(b"")
    (tmp_path / "TS_02" / "TS_02_000_0.0.tif").write_bytes(b"")
    (tmp_path / "gain.mrc").write_bytes(b"")
    assert selftest.count_movies(tmp_path) == {"TS_01": 2, "TS_02": 1}
