"""``tomoguide --selftest``: does this installation (or frozen bundle) work? Exit status 0 when it does.

What it does, in a temporary folder that is removed afterwards:

1. simulates the tiny demo data set and creates its project (:func:`tomoguide.demo.prepare_demo`, preset
   ``tiny``: one short tilt series of small movies; this compiles and runs the simulator's numba kernels);
2. opens the wizard (:class:`~tomoguide.pages.wizard.WizardWindow`) on the project, without touching the
   user's settings (``remember_geometry=False``);
3. presses Run on the import page: the step runs in the GUI's worker thread while this function processes Qt
   events, and counts the progress signals;
4. checks that the step finished ``done``, that the preview's table lists every simulated tilt series with its
   number of tilts (counted from the movie files on disk) and that the tilt-series viewer shows an image;
5. checks vispy (3D previews): its GLSL shader library is present, and a small volume renders through
   :class:`~tomoguide.widgets.volume_view.VolumeView` (vispy's EGL backend on the offscreen platform, the
   PySide6 canvas otherwise). "No EGL/OpenGL on this machine" is a warning unless
   ``TOMOGUIDE_SELFTEST_3D=require``; ``TOMOGUIDE_SELFTEST_3D=skip`` leaves the render out;
6. prints a short report (phase times in s, versions, Qt platform, frozen or not) on stdout and closes.

Without a display (no ``DISPLAY`` / ``WAYLAND_DISPLAY``) Qt's ``offscreen`` platform is chosen before the
``QApplication`` exists. Every phase shares one deadline (``timeout_s``, default :data:`SELFTEST_TIMEOUT_S`, or
``$TOMOGUIDE_SELFTEST_TIMEOUT_S``); past it the self-test stops with "timed out" and exit status 1 (a running
import is cancelled first), and a watchdog ends the process (status 1) if even that hangs.
"""

from __future__ import annotations

import faulthandler
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SELFTEST_TIMEOUT_S = 120.0
WATCHDOG_GRACE_S = 30.0  # the watchdog ends the process this long after the deadline
IMPORT_STEP = "import_movies"
MOVIE_SUFFIXES = (".mrc", ".tif", ".tiff", ".eer")


class SelftestFailed(Exception):
    """A check of the self-test failed; the message says which and why."""


class SelftestTimeout(SelftestFailed):
    """The self-test ran past its deadline."""


@dataclass
class SelftestReport:
    """What the self-test measured: phase times (s, in order), facts (text), warnings."""

    phases: list[tuple[str, float]] = field(default_factory=list)
    facts: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def fact(self, name: str, value: object) -> None:
        self.facts.append((name, str(value)))

    def lines(self) -> list[str]:
        out = [f"  {name:<22} {value}" for name, value in self.facts]
        out += [f"  time {name:<17} {seconds:6.2f} s" for name, seconds in self.phases]
        out += [f"  warning: {w}" for w in self.warnings]
        return out


def choose_qt_platform(environ: dict[str, str] | os._Environ[str] | None = None) -> str | None:
    """Set ``QT_QPA_PLATFORM=offscreen`` in ``environ`` (default ``os.environ``) when it is unset and there is
    no X11/Wayland display; returns the platform that was set, or None when the environment decides."""
    env = os.environ if environ is None else environ
    if env.get("QT_QPA_PLATFORM") or env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"):
        return None
    env["QT_QPA_PLATFORM"] = "offscreen"
    return "offscreen"


def versions() -> dict[str, str]:
    """Versions of tomoguide, Python and the libraries the bundle must carry (``"missing: ..."`` when absent)."""
    import importlib

    from tomoguide import __version__

    out = {"tomoguide": __version__, "python": platform.python_version()}
    for name in ("PySide6", "numpy", "scipy", "numba", "llvmlite", "pyqtgraph", "vispy", "mrcfile"):
        try:
            out[name] = str(getattr(importlib.import_module(name), "__version__", "?"))
        except Exception as exc:  # noqa: BLE001 - report it, the checks decide
            out[name] = f"missing: {type(exc).__name__}: {exc}"
    try:
        from PySide6.QtCore import qVersion

        out["Qt"] = qVersion()
    except ImportError:
        out["Qt"] = "not importable"
    return out


def count_movies(data_dir: Path) -> dict[str, int]:
    """Movies per tilt series in a simulated data folder ``data_dir/<TS>/<TS>_<NNN>_<angle>.<ext>``."""
    counts = {}
    for d in sorted(p for p in data_dir.iterdir() if p.is_dir()):
        n = sum(1 for f in d.iterdir() if f.suffix.lower() in MOVIE_SUFFIXES)
        if n:
            counts[d.name] = n
    return counts


class _Deadline:
    """One deadline for every phase (monotonic clock)."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.t0 = time.monotonic()
        self.end = self.t0 + timeout_s

    def left(self) -> float:
        return self.end - time.monotonic()

    def check(self, phase: str) -> None:
        if self.left() <= 0:
            raise SelftestTimeout(f"timed out after {self.timeout_s:g} s ({phase})")


def _in_thread(func: Callable[[], Any], deadline: _Deadline, phase: str, pump: Callable[[], None]) -> Any:
    """Run ``func()`` in a daemon thread (pumping Qt events meanwhile) and return its result; raise its
    exception, or :class:`SelftestTimeout` when the deadline passes (the thread is abandoned)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = func()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"selftest-{phase}", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.05)
        pump()
        if thread.is_alive() and deadline.left() <= 0:
            raise SelftestTimeout(f"timed out after {deadline.timeout_s:g} s ({phase} did not finish)")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _test_volume(n: int = 32) -> Any:
    """A ``(n, n, n)`` float32 volume: a hollow sphere (shell) off centre, for the 3D check."""
    import numpy as np

    z, y, x = np.mgrid[:n, :n, :n].astype(np.float32)
    r = np.sqrt((z - 0.45 * n) ** 2 + (y - 0.5 * n) ** 2 + (x - 0.55 * n) ** 2)
    return np.exp(-((r - 0.3 * n) / 2.0) ** 2).astype(np.float32)


def check_vispy(report: SelftestReport, mode: str, pump: Callable[[], None]) -> None:
    """vispy's shader library is present and (unless ``mode == "skip"``) a volume renders (see module doc)."""
    import numpy as np
    from vispy import glsl

    shader_dir = Path(glsl.__file__).parent
    n_shaders = len(list(shader_dir.rglob("*.glsl")))
    if n_shaders == 0 or glsl.find("colormaps/colormaps.glsl") is None:
        raise SelftestFailed(f"vispy's GLSL shader library is missing ({shader_dir}: {n_shaders} .glsl files); "
                             f"a frozen bundle needs --collect-data vispy")
    report.fact("vispy shaders", f"{n_shaders} .glsl files")
    if mode == "skip":
        report.fact("3D view", "skipped (TOMOGUIDE_SELFTEST_3D=skip)")
        return
    from tomoguide.widgets.volume_view import VolumeView

    view = VolumeView(size_px=(160, 160))
    try:
        view.set_volume(_test_volume())
        pump()
        if view.interactive:
            canvas: Any = view.canvas
            image = np.asarray(canvas.render(alpha=True)) if canvas is not None else None
            how = "vispy PySide6 canvas"
        else:
            image = view.last_image
            how = "vispy EGL backend, offscreen"
        if image is None:
            reason = view.image_label.text() or "no image"
            if mode == "require":
                raise SelftestFailed(f"3D view: {reason}")
            report.warnings.append(f"3D view unavailable here: {reason}")
            report.fact("3D view", "unavailable (see warning)")
            return
        lit = float(np.mean(np.asarray(image)[..., :3].max(axis=-1) > 16))
        if not 0.005 < lit < 0.95:
            raise SelftestFailed(f"3D view: the rendered volume looks wrong ({100 * lit:.1f} % of pixels lit)")
        report.fact("3D view", f"{how}: {image.shape[1]}×{image.shape[0]} px, {100 * lit:.0f} % lit")
    finally:
        view.close()
        view.deleteLater()
        pump()


def check_cluster(project_dir: Path, work: Path, report: SelftestReport) -> None:
    """Start a local Dask cluster with one worker process, run the motion+CTF unit of the first imported movie on
    it and in this process; the two aligned sums must be identical."""
    import numpy as np

    from tomoguide.cluster import ClusterSettings, DaskExecutor, InlineExecutor, Unit
    from tomoguide.project import Project
    from tomoguide.steps.import_movies import load_series
    from tomoguide.steps.motion_ctf import MotionCtfParams, motion_ctf_unit

    proj = Project.open(project_dir, readonly=True)
    try:
        series = load_series(proj.output_path(IMPORT_STEP, "tilt_series"))
    finally:
        proj.close()
    s = series[0]
    t0 = s.tilts[0]
    params = MotionCtfParams(estimate_ctf=False)
    sums = {}
    for name in ("inline", "local"):
        out = work / f"unit_{name}.npz"
        unit = Unit(f"{s.name} {Path(t0.movie).name}",
                    (t0, s.geometry, float(s.geometry.true_tilt_deg()[0]), params, None, out, s.name, 0))
        started = time.monotonic()
        ex = InlineExecutor() if name == "inline" else DaskExecutor("local", ClusterSettings(workers=1, retries=0))
        try:
            if name == "local":
                report.fact("local cluster", f"{ex.describe()}, started in {time.monotonic() - started:.1f} s")
            results = dict(ex.map_units(motion_ctf_unit, [unit]))
        finally:
            ex.close()
        if unit.name not in results or not out.is_file():
            raise SelftestFailed(f"the {name} executor did not run the unit {unit.name}")
        with np.load(out) as z:
            sums[name] = z["sum"]
    if not np.array_equal(sums["inline"], sums["local"]):
        raise SelftestFailed("the unit run on the local cluster gave another result than in this process")
    report.fact("cluster unit", f"motion correction of {Path(t0.movie).name} on a worker process: identical "
                                f"({sums['local'].shape[1]}×{sums['local'].shape[0]} px)")


def _selftest_body(work: Path, report: SelftestReport, deadline: _Deadline, mode_3d: str,
                   say: Callable[[str], None]) -> None:
    from PySide6.QtCore import QCoreApplication
    from PySide6.QtGui import QGuiApplication
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([sys.argv[0] if sys.argv else "tomoguide", "--selftest"])
    report.fact("Qt platform", QGuiApplication.platformName())

    def pump() -> None:
        QCoreApplication.processEvents()

    # 1. the tiny simulated data set and its project (numba kernels compile here on a first run)
    t = time.monotonic()
    say("simulating the tiny data set …")
    from tomoguide.demo import prepare_demo

    project_dir = Path(_in_thread(lambda: prepare_demo(work / "demo", preset="tiny"), deadline,
                                  "simulating the tiny data set", pump))
    report.phases.append(("simulate", time.monotonic() - t))
    expected = count_movies(work / "demo" / "data")
    if not expected:
        raise SelftestFailed(f"the simulator wrote no movies in {work / 'demo' / 'data'}")
    report.fact("data set", ", ".join(f"{k}: {v} movies" for k, v in expected.items()))
    deadline.check("after simulating")

    # 2. the wizard on the project
    t = time.monotonic()
    say("opening the wizard …")
    from tomoguide.pages.previews import ImportPreview
    from tomoguide.pages.wizard import WizardWindow
    from tomoguide.project import Project

    window = WizardWindow(Project.open(project_dir), remember_geometry=False)
    try:
        window.show()
        pump()
        page = window.current_page()
        if page.step_id != IMPORT_STEP:
            raise SelftestFailed(f"the wizard opened on {page.step_id!r}, not on the import step")
        report.phases.append(("open wizard", time.monotonic() - t))
        deadline.check("after opening the wizard")

        # 3. Run, through the page's button and the GUI's worker thread
        t = time.monotonic()
        say("running the import step …")
        if not page.run_button.isEnabled():
            raise SelftestFailed(f"Run is disabled on the import page: {page.issues_label.text()}")
        page.run_button.click()
        worker = page.worker
        if worker is None:
            raise SelftestFailed(f"the import run did not start: {page.progress_label.text()} "
                                 f"{page.issues_label.text()}")
        progress: list[str] = []
        worker.progress.connect(lambda _f, message: progress.append(message))
        if not page.wait_for_run(timeout_s=max(0.1, deadline.left())):
            page.cancel_run()
            stopped = page.wait_for_run(timeout_s=10.0)
            raise SelftestTimeout(f"timed out after {deadline.timeout_s:g} s (the import step was still running"
                                  f"{'; cancelled' if stopped else ' and did not stop when cancelled'})")
        report.phases.append(("import step", time.monotonic() - t))

        # 4. the outcome and the preview
        state = window.project.data.steps[IMPORT_STEP]
        if page.last_outcome != "done" or state.status != "done":
            detail = page.error_label.text() or state.error or page.progress_label.text()
            raise SelftestFailed(f"the import step ended {page.last_outcome!r} (status {state.status!r}): {detail}")
        if not progress:
            raise SelftestFailed("the import step sent no progress to the page")
        preview = page.preview
        if not isinstance(preview, ImportPreview):
            raise SelftestFailed(f"the import page's preview is a {type(preview).__name__}, not ImportPreview")
        rows = {preview.table.item(r, 0).text(): int(preview.table.item(r, 1).text())
                for r in range(preview.table.rowCount())}
        if rows != expected:
            raise SelftestFailed(f"the import preview lists {rows} (series: tilts), the data hold {expected}")
        image = preview.viewer.image_item.image
        if image is None or not preview.viewer.isEnabled() or min(image.shape) < 8:
            raise SelftestFailed("the tilt-series viewer shows no frame sum after the import")
        lo, hi = preview.viewer.levels
        if not hi > lo:
            raise SelftestFailed(f"the tilt-series viewer's contrast is empty (levels {lo:g} … {hi:g})")
        shot = window.grab()
        if shot.isNull() or shot.width() < 100:
            raise SelftestFailed("the wizard window could not be drawn")
        report.fact("import", f"done; {len(progress)} progress messages; preview: {len(rows)} series, "
                              f"frame sum shown ({image.shape[1]}×{image.shape[0]} px after display binning)")
    finally:
        window.close()
        window.deleteLater()
        pump()
        window.project.close()
    deadline.check("after the import")

    # 5. the executor: a local Dask cluster (one worker process) runs one unit of a step — the frame alignment
    # and CTF fit of the first movie — and gives the same sum as this process
    t = time.monotonic()
    say("starting a local cluster and running one unit through it …")
    _in_thread(lambda: check_cluster(project_dir, work, report), deadline, "running a unit on a local cluster", pump)
    report.phases.append(("local cluster", time.monotonic() - t))
    deadline.check("after the local cluster")

    # 6. vispy
    t = time.monotonic()
    say("checking the 3D view (vispy) …")
    check_vispy(report, mode_3d, pump)
    report.phases.append(("3D check", time.monotonic() - t))
    app.processEvents()  # keeps the application alive until here


def run_selftest(*, timeout_s: float | None = None, work_dir: Path | None = None) -> int:
    """Run the self-test (see the module docstring); print the report; return 0 when everything worked, else 1.

    ``timeout_s`` (default ``$TOMOGUIDE_SELFTEST_TIMEOUT_S`` or :data:`SELFTEST_TIMEOUT_S`) bounds the whole
    run; ``work_dir`` is where the temporary folder goes (default: the system's temporary folder).
    """
    t_start = time.monotonic()
    if timeout_s is None:
        try:
            timeout_s = float(os.environ.get("TOMOGUIDE_SELFTEST_TIMEOUT_S", SELFTEST_TIMEOUT_S))
        except ValueError:
            print("tomoguide selftest: TOMOGUIDE_SELFTEST_TIMEOUT_S must be a number of seconds", file=sys.stderr)
            return 1
    mode_3d = os.environ.get("TOMOGUIDE_SELFTEST_3D", "try").strip().lower() or "try"
    if mode_3d not in ("try", "require", "skip"):
        print(f"tomoguide selftest: TOMOGUIDE_SELFTEST_3D={mode_3d!r}: use try, require or skip", file=sys.stderr)
        return 1
    chose = choose_qt_platform()
    deadline = _Deadline(timeout_s)
    report = SelftestReport()
    frozen = bool(getattr(sys, "frozen", False))
    report.fact("program", f"{sys.executable} ({'frozen bundle' if frozen else 'Python'})")
    report.fact("versions", ", ".join(f"{k} {v}" for k, v in versions().items()))
    report.fact("system", f"{platform.system()} {platform.release()} {platform.machine()}, "
                          f"{os.cpu_count()} CPUs")
    if chose:
        report.fact("display", "none: QT_QPA_PLATFORM=offscreen set by the self-test")

    def say(message: str) -> None:
        print(f"selftest: {message}", file=sys.stderr, flush=True)

    def watchdog() -> None:
        sys.stderr.write(f"tomoguide selftest: FAILED: timed out after {timeout_s:g} s and did not stop within "
                         f"{WATCHDOG_GRACE_S:g} s more; the threads were:\n")
        try:
            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        except (AttributeError, ValueError, OSError):
            sys.stderr.write("(no thread tracebacks available)\n")
        sys.stderr.flush()
        os._exit(1)

    dog = threading.Timer(timeout_s + WATCHDOG_GRACE_S, watchdog)
    dog.daemon = True
    dog.start()
    status = 1
    try:
        parent = None if work_dir is None else str(work_dir)
        with tempfile.TemporaryDirectory(prefix="tomoguide-selftest-", dir=parent,
                                         ignore_cleanup_errors=True) as tmp:
            report.fact("work folder", f"{tmp} (removed afterwards)")
            try:
                _selftest_body(Path(tmp), report, deadline, mode_3d, say)
            except SelftestFailed as exc:
                failure = str(exc)
            except Exception as exc:  # noqa: BLE001 - anything else is a failure with its reason
                import traceback

                traceback.print_exc()
                failure = f"{type(exc).__name__}: {exc}"
            else:
                failure = ""
    finally:
        dog.cancel()
    report.phases.append(("total", time.monotonic() - t_start))
    print("tomoguide selftest report")
    print("\n".join(report.lines()))
    if failure:
        print(f"tomoguide selftest: FAILED: {failure}")
        print(f"tomoguide selftest: FAILED: {failure}", file=sys.stderr)
    else:
        print("tomoguide selftest: OK")
        status = 0
    sys.stdout.flush()
    return status
