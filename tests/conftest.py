"""Test set-up shared by every test: offscreen Qt, CPU backend, and small data sets made on the fly."""

from __future__ import annotations

import os

# Before anything imports Qt: render offscreen (no display in CI), and keep computations on the CPU.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("TOMOGUIDE_DEVICE", "cpu")
# Steps' units in the test process (tomoguide.cluster): a local Dask cluster costs ~4 s per command that starts one;
# tests/test_cluster*.py use local and SLURM executors explicitly.
os.environ.setdefault("TOMOGUIDE_CLUSTER", "inline")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
# The licence-permitting, small part of ../shared/data, copied unchanged to the same relative paths (see
# tests/data/SOURCES.md): in a fresh clone (CI) there is no ../shared/data, and the real-file tests read these.
BUNDLED_DATA = REPO / "tests" / "data"
# What ../shared/data holds that tests/data does not, and why (a test needing one of them skips in a fresh clone).
NOT_BUNDLED = {
    "relion5_warptools_particles": "GPL-3.0 (bpowell122/tomodrgn): not redistributable in this project (licence)",
    "tilt_series/pypi__etspy-1.3.0/HAADF_bin2.mrc": "a 2.6 MB MRC stack, too large to bundle (size)",
    "tilt_series/pypi__etspy-1.3.0/test_000.mrc": "a 4.2 MB MRC stack, too large to bundle (size)",
}


def real_data_dir() -> Path:
    """Where the real files written by others are: ../shared/data when present, else the bundled tests/data."""
    return SHARED_DATA if SHARED_DATA.is_dir() else BUNDLED_DATA


def real_file_skip_reason(rel: str | Path) -> str:
    """The skip message for a real file (relative to the data folder) found neither in ../shared/data nor in
    tests/data."""
    rel = Path(rel).as_posix()
    why = next((w for k, w in NOT_BUNDLED.items() if rel == k or rel.startswith(k + "/")),
               "not in tests/data (not redistributable: licence, or not copied)")
    return f"real file {rel} absent: {why}; it lies in ../shared/data only (not present here)"


def real_file(rel: str | Path) -> Path:
    """Path of one real file: ../shared/data/REL when present, else tests/data/REL; skips (naming the file and why)
    when it is in neither."""
    for root in (SHARED_DATA, BUNDLED_DATA):
        if (root / rel).exists():
            return root / rel
    pytest.skip(real_file_skip_reason(rel))


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The real files written by others: ../shared/data when present, else tests/data (the bundled, licence-permitting
    subset; a test that reads a file missing there skips, naming the file: see :func:`pytest_runtest_makereport`)."""
    root = real_data_dir()
    if not root.is_dir():
        pytest.skip(f"neither {SHARED_DATA} nor {BUNDLED_DATA} present")
    return root


@pytest.fixture(scope="session")
def real_data_file():
    """The function :func:`real_file`: ``real_data_file("mdoc/...")`` -> the path, or a skip naming the file."""
    return real_file


def _missing_bundled_file(exc: BaseException | None) -> str | None:
    """The path (relative to tests/data) of a real file the failed test wanted in tests/data and did not find
    (only when ../shared/data is absent), read from the exception chain; None otherwise."""
    import re

    if SHARED_DATA.is_dir():
        return None
    pattern = re.compile(re.escape(str(BUNDLED_DATA)) + r"/[^\s'\"`,;:()\]\[]+")
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        texts = [str(getattr(exc, "filename", "") or ""), str(exc)]
        for text in texts:
            for m in pattern.finditer(text):
                path = Path(m.group(0).rstrip("."))
                if not path.exists():
                    return path.relative_to(BUNDLED_DATA).as_posix()
        exc = exc.__cause__ or exc.__context__
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """A test that failed because a real file is not bundled in tests/data (and ../shared/data is absent) is
    reported as skipped, with the file and the reason (licence or size), instead of failed."""
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and call.excinfo is not None:
        rel = _missing_bundled_file(call.excinfo.value)
        if rel is not None:
            rep.outcome = "skipped"
            rep.longrepr = (str(item.path), (item.location[1] or 0) + 1, f"Skipped: {real_file_skip_reason(rel)}")


def _is_real_file_skip(reason: str) -> bool:
    return "shared/data" in reason or "shared test data" in reason


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """One line saying how many tests skipped because real files written by others are absent, and why."""
    reasons = []
    for rep in terminalreporter.stats.get("skipped", []):
        longrepr = rep.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
        if _is_real_file_skip(reason):
            reasons.append(reason)
    where = "../shared/data" if SHARED_DATA.is_dir() else "tests/data (bundled subset; ../shared/data absent)"
    if not reasons:
        terminalreporter.write_line(f"real files: read from {where}; no test skipped for want of one")
        return

    def why(reason: str) -> str:
        text = next((w for k, w in NOT_BUNDLED.items() if k in reason), reason)
        return "licence" if "(licence)" in text else "size" if "(size)" in text else "other"

    kinds = [why(r) for r in reasons]
    licence, size, other = kinds.count("licence"), kinds.count("size"), kinds.count("other")
    terminalreporter.write_line(
        f"real files: {len(reasons)} test(s) skipped because real files written by others are absent "
        f"({licence} not redistributable under their licence (GPL), {size} too large to bundle, {other} other/not "
        f"present); they lie in ../shared/data only; the other real-file tests read {where}")


@pytest.fixture(autouse=True)
def _isolated_user_dirs(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings and recent-project lists go to a temporary folder, never the real user's."""
    home = tmp_path_factory.mktemp("userdirs")
    monkeypatch.setenv("TOMOGUIDE_CONFIG_DIR", str(home))


def write_mini_session(folder: Path, *, n_series: int = 2, tilts: tuple[float, ...] = (0.0, 3.0, -3.0, -6.0, 6.0),
                       shape: tuple[int, int] = (64, 80), n_frames: int = 3, pixel_A: float = 2.5,
                       tilt_axis_deg: float = 85.0, dose: float = 3.0, crlf: bool = False) -> list[Path]:
    """A tiny SerialEM-like session written by hand (independent of tomoguide's writers).

    Per series ``TS_<i>``: one .mdoc with [ZValue] sections in acquisition order (the ``tilts`` order, 1 minute
    apart), Windows-style SubFramePath values, and one MRC movie per tilt beside it (uint8 Poisson counts with
    a bright square whose position encodes the tilt). Returns the mdoc paths.
    """
    import datetime as dt

    import mrcfile
    import numpy as np

    rng = np.random.default_rng(7)
    folder.mkdir(parents=True, exist_ok=True)
    mdocs = []
    nl = "\r\n" if crlf else "\n"
    for s in range(1, n_series + 1):
        name = f"TS_{s:02d}"
        lines = [f"PixelSpacing = {pixel_A}", "ImageFile = " + name + ".mrc", f"ImageSize = {shape[1]} {shape[0]}",
                 "DataMode = 1", "",
                 f"[T = SerialEM: Digitized on EMBL Krios   27-Nov-26  10:00:00    ]", "",
                 f"[T =     Tilt axis angle = {tilt_axis_deg}, binning = 1  spot = 8  camera = 0]", ""]
        t0 = dt.datetime(2026, 11, 27, 10, 0, 0)
        for z, angle in enumerate(tilts):
            movie = f"{name}_{z + 1:03d}_{angle:.1f}.mrc"
            frames = rng.poisson(2.0, (n_frames, *shape)).astype(np.uint8)
            col = int(10 + (angle + 60) / 3)
            frames[:, 10:20, col:col + 10] += 5
            with mrcfile.new(folder / movie, overwrite=True) as m:
                m.set_data(frames)
                m.voxel_size = pixel_A
            when = (t0 + dt.timedelta(minutes=z)).strftime("%d-%b-%y  %H:%M:%S")
            lines += [f"[ZValue = {z}]", f"TiltAngle = {angle:.2f}", "StagePosition = 10 20",
                      f"PixelSpacing = {pixel_A}", f"ExposureDose = {dose}", "TargetDefocus = -3",
                      "Defocus = -3.1", "RotationAngle = -95", f"NumSubFrames = {n_frames}",
                      f"SubFramePath = X:\\frames\\{movie}", f"DateTime = {when}", ""]
        path = folder / f"{name}.mrc.mdoc"
        path.write_bytes(nl.join(lines).encode())
        mdocs.append(path)
    return mdocs


@pytest.fixture
def mini_session(tmp_path: Path) -> Path:
    """Folder with two 5-tilt series (.mdoc + MRC movies), see :func:`write_mini_session`."""
    folder = tmp_path / "session"
    write_mini_session(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The simulator's tiny preset, generated once per test session: ``DIR/data`` (movies, mdoc, gain) and
    ``DIR/truth`` (ground truth; see ``DIR/truth/summary.json`` for every convention)."""
    from tomoguide import synth

    out = tmp_path_factory.mktemp("tiny_dataset")
    synth.generate(out, synth.PRESETS["tiny"])
    return out


@pytest.fixture
def session_writer():
    """The function :func:`write_mini_session`, for tests that need sessions with other settings."""
    return write_mini_session


@pytest.fixture(scope="session")
def tiny_project_root(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``ROOT/data`` (a copy of the tiny preset's data) and ``ROOT/project``: a project run through the steps on
    it, once per test session (as ``tomoguide demo --preset tiny --no-gui`` does), to the end: every step must
    finish (a regression in a late step fails here, instead of turning the tests that need it into skips). Copy
    ROOT before changing it."""
    import shutil

    from tomoguide import synth
    from tomoguide.cli import run_steps
    from tomoguide.demo import demo_params
    from tomoguide.project import Project

    root = tmp_path_factory.mktemp("tiny_project")
    shutil.copytree(tiny_dataset / "data", root / "data")
    Project.create(root / "project", params=demo_params(root / "data", synth.PRESETS["tiny"])).close()
    run_steps(root / "project", quiet=True)
    with Project.open(root / "project", readonly=True) as proj:
        unfinished = {s: proj.data.steps[s].error for s in proj.data.steps if not proj.is_up_to_date(s)}
        assert not unfinished, f"the tiny demo did not finish: {unfinished}"
    return root

