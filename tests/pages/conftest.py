"""GUI fixtures: a project on the mini session, a slow import step (for cancel tests), a wizard window."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from tomoguide.project import Project  # noqa: E402
from tomoguide.steps.base import Progress  # noqa: E402
from tomoguide.steps.import_movies import ImportMovies  # noqa: E402


@pytest.fixture
def project_dir(mini_session: Path, tmp_path: Path) -> Path:
    """A closed project on the mini session (import parameters set, nothing run)."""
    d = tmp_path / "project"
    Project.create(d, params={"import_movies": {"files_dir": str(mini_session), "pattern": "*.mdoc"}}).close()
    return d


@pytest.fixture
def slow_import(monkeypatch: pytest.MonkeyPatch) -> float:
    """Make the import step sleep 0.25 s (checking for cancel every 20 ms) before each of its progress reports.

    Returns the delay per report in seconds. monkeypatch restores the real step afterwards.
    """
    delay_s = 0.25
    original = ImportMovies.run

    def slow_run(self, params, ctx):  # type: ignore[no-untyped-def]
        gen = original(self, params, ctx)
        while True:
            t0 = time.monotonic()
            while time.monotonic() - t0 < delay_s:
                ctx.check_cancel()
                time.sleep(0.02)
            try:
                prog = next(gen)
            except StopIteration as stop:
                return stop.value
            yield Progress(prog.fraction, prog.message)

    monkeypatch.setattr(ImportMovies, "run", slow_run)
    return delay_s


@pytest.fixture
def open_wizard(qtbot) -> Iterator:  # type: ignore[no-untyped-def]
    """``open_wizard(project_dir)`` -> a shown WizardWindow; every window is closed (and its run cancelled)."""
    from tomoguide.pages.wizard import WizardWindow

    windows: list[WizardWindow] = []

    def _open(directory: Path) -> WizardWindow:
        w = WizardWindow(Project.open(directory))
        qtbot.addWidget(w)
        w.show()
        windows.append(w)
        return w

    yield _open
    for w in windows:
        if w.isVisible() or w.running_page() is not None:
            w.confirm_close_while_running = lambda: True  # type: ignore[method-assign]
            w.close()
        w.project.close()


# ---------------------------------------------------------------------------------------------------------------
# a second, test-only step after import (Next, stale marking downstream, the generic preview, form conditions)
# ---------------------------------------------------------------------------------------------------------------

from tomoguide.steps.base import Issue, RunContext, Step, StepParams, StepResult, param  # noqa: E402


class EchoParams(StepParams):
    method: str = param("WBP", title="Method", choices=("WBP", "SIRT"), help="Reconstruction method.")
    iterations: int = param(10, title="Iterations", unit="1", hard=(1, 500), suggest=(5, 50),
                            enabled_if=[("method", "=", "SIRT")], help="SIRT iterations.")
    use_mask: bool = param(False, title="Use a mask", help="Apply a mask.")
    radius_A: float | None = param(None, title="Mask radius", unit="Å", hard=(1.0, 5000.0),
                                   empty_means="half the box", enabled_if=[("use_mask", "=", True)],
                                   help="Radius of the mask.")
    scale: float = param(1.0, title="Scale", unit="1", hard=(0.0, 10.0), advanced=True,
                         help="An advanced factor.")


class EchoStep(Step):
    """Counts the imported tilts (uses the import step's output); fails when scale is 0."""

    id = "echo"
    title = "Echo the tilt count"
    summary = "A test-only step."
    help = "<p>Test step.</p>"
    Params = EchoParams
    inputs = ("import_movies",)

    def check(self, params: StepParams, ctx: RunContext) -> list[Issue]:
        return []

    def run(self, params, ctx):  # type: ignore[no-untyped-def]
        from tomoguide.steps.import_movies import load_series

        series = load_series(ctx.output("import_movies", "tilt_series"))
        for i in range(3):
            ctx.check_cancel()
            yield Progress((i + 1) / 3, f"part {i + 1}/3")
        if params.scale == 0:
            raise ValueError("scale: zero is not allowed here")
        out = ctx.run_dir / "echo.txt"
        out.write_text(str(sum(len(s.tilts) for s in series)))
        return StepResult(outputs={"echo": out}, metrics={"n_tilts": sum(len(s.tilts) for s in series),
                                                          "per_series": {s.name: len(s.tilts) for s in series}},
                          summary="echoed")


@pytest.fixture
def two_steps(monkeypatch: pytest.MonkeyPatch) -> tuple[type[Step], ...]:
    """The workflow is import + the test-only echo step (registry.workflow replaced for this test only)."""
    from tomoguide.steps import registry

    steps = (ImportMovies, EchoStep)
    monkeypatch.setattr(registry, "workflow", lambda: steps)
    return steps
