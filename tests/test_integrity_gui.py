"""The wizard's side of issue 15: it asks before a rerun that may make finished steps stale and says what came
of it, shows a dead end on its own page, refuses form values the step's checks refuse (nothing saved), has the
retention settings, and opens projects whose lock is stale or whose data moved by asking once."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from PySide6.QtWidgets import QMessageBox  # noqa: E402

from tomoguide.project import LOCK_FILE, PROJECT_FILE, Project  # noqa: E402
from tomoguide.runner import StepRun, run_to_end  # noqa: E402
from tomoguide.steps import registry  # noqa: E402
from tomoguide.steps.base import Issue, Progress, RunContext, Step, StepParams, StepResult, param  # noqa: E402
from tomoguide.steps.import_movies import ImportMovies, load_series  # noqa: E402


class CountParams(StepParams):
    scale: float = param(1.0, title="Scale", unit="1", hard=(0.0, 10.0), help="Things per tilt.")
    low: int = param(1, title="Low", unit="1", hard=(0, 100), help="Lower limit.")
    high: int = param(5, title="High", unit="1", hard=(0, 100), help="Upper limit (not below Low).")


class CountStep(Step):
    """Counts the imported tilts times Scale; Scale 0 is a dead end; Low above High is refused by its check."""

    id = "count"
    title = "Count the things"
    summary = "A test-only step."
    help = "<p>Test step.</p>"
    Params = CountParams
    inputs = ("import_movies",)

    def check(self, params: StepParams, ctx: RunContext) -> list[Issue]:
        assert isinstance(params, CountParams)
        if params.low > params.high:  # naming both: either edit that makes it so is refused
            return [Issue("error", "Low must not be above High", "low"),
                    Issue("error", "High must not be below Low", "high")]
        return []

    def run(self, params, ctx: RunContext):  # type: ignore[no-untyped-def]
        series = load_series(ctx.output("import_movies", "tilt_series"))
        yield Progress(0.5, "counting")
        n = int(sum(len(s.tilts) for s in series) * params.scale)
        out = ctx.write_text("count.txt", str(n))
        return StepResult(outputs={"count": out}, metrics={"n": n},
                          nothing_for_next=None if n else f"0 things counted: raise Scale (now {params.scale:g})")


class AfterStep(Step):
    id = "after"
    title = "Use the count"
    summary = "A test-only step."
    help = "<p>Test step.</p>"
    Params = CountParams
    inputs = ("count",)

    def run(self, params, ctx: RunContext):  # type: ignore[no-untyped-def]
        yield Progress(1.0, "")
        return StepResult(outputs={"after": ctx.write_text("after.txt", "ok")})


@pytest.fixture
def finished(monkeypatch: pytest.MonkeyPatch, mini_session: Path, tmp_path: Path) -> Path:
    """A project on the mini session with import, count and after done (the workflow is these three)."""
    steps = (ImportMovies, CountStep, AfterStep)
    monkeypatch.setattr(registry, "workflow", lambda: steps)
    d = tmp_path / "project"
    with Project.create(d, params={"import_movies": {"files_dir": str(mini_session)}}) as proj:
        for sid in ("import_movies", "count", "after"):
            run_to_end(StepRun(proj, sid))
    return d


def _window(qtbot, d: Path):  # type: ignore[no-untyped-def]
    from tomoguide.pages.wizard import WizardWindow

    w = WizardWindow(Project.open(d), remember_geometry=False)
    qtbot.addWidget(w)
    w.show()
    return w


def _close(w) -> None:  # type: ignore[no-untyped-def]
    w.confirm_close_while_running = lambda: True
    w.close()
    w.project.close()


def test_a_rerun_asks_first_and_says_what_came_of_it(qtbot, finished: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    w = _window(qtbot, finished)
    try:
        w.go_to(1)
        page = w.current_page()
        assert page.step_id == "count"
        questions: list[str] = []
        answers = iter([QMessageBox.StandardButton.No, QMessageBox.StandardButton.Yes])
        monkeypatch.setattr(QMessageBox, "question", lambda parent, title, text, *a: questions.append(text)
                            or next(answers))
        runs = len(list((finished / "steps" / "count").iterdir()))
        assert page.run_step() is False  # "No": nothing runs
        assert "1 later step is done" in questions[-1] and "Use the count" in questions[-1]
        assert len(list((finished / "steps" / "count").iterdir())) == runs
        assert page.run_step() is True  # "Yes"
        qtbot.waitUntil(lambda: not page.is_running(), timeout=20000)
        assert page.last_outcome == "done"
        assert "Identical results" in page.saved_label.text()
        assert w.project.is_up_to_date("after")
        # with different results, the page says which steps became stale
        page.form.set_value("scale", 2.0)
        assert "Now stale" in page.saved_label.text()
        page.form.set_value("scale", 1.0)  # changed back: the kept run is done again, nothing to run
        assert w.project.is_up_to_date("count") and w.project.is_up_to_date("after")
    finally:
        _close(w)


def test_a_dead_end_fails_on_its_own_page(qtbot, finished: Path) -> None:  # type: ignore[no-untyped-def]
    w = _window(qtbot, finished)
    try:
        w.go_to(1)
        page = w.current_page()
        page.form.set_value("scale", 0.0)
        assert page.run_step() is True  # "after" is stale already: no question
        qtbot.waitUntil(lambda: not page.is_running(), timeout=20000)
        assert page.last_outcome == "failed"
        assert page.error_box.isVisible() and "0 things counted: raise Scale (now 0)" in page.error_label.text()
        assert not page.error_details_button.isVisible()  # the step's message, no traceback to unfold
        assert not w.next_button.isEnabled()
        assert w.step_list.item(1).data(0x0100) == "failed"
    finally:
        _close(w)


def test_a_value_the_checks_refuse_is_not_saved(qtbot, finished: Path) -> None:  # type: ignore[no-untyped-def]
    w = _window(qtbot, finished)
    try:
        w.go_to(1)
        page = w.current_page()
        before = (finished / PROJECT_FILE).read_bytes()
        page.form.set_value("low", 7)  # above High (5): refused by the step's check
        assert "Not saved" in page.saved_label.text() and "Low must not be above High" in page.saved_label.text()
        assert (finished / PROJECT_FILE).read_bytes() == before
        assert page.form.values()["low"] == 1  # the form shows the saved value again
        page.form.set_value("high", 9)
        page.form.set_value("low", 7)  # now accepted
        assert json.loads((finished / PROJECT_FILE).read_text())["steps"]["count"]["params"]["low"] == 7
    finally:
        _close(w)


def test_the_settings_dialog_sets_the_runs_kept(qtbot, finished: Path) -> None:  # type: ignore[no-untyped-def]
    w = _window(qtbot, finished)
    try:
        proj = w.project
        run_to_end(StepRun(proj, "count"))  # a second run of count: one earlier run kept
        dialog = w.show_settings()
        assert "Earlier runs kept now: 1" in dialog.usage_label.text()
        assert dialog.keep_runs.value() == 3 and dialog.budget.value() == 20.0
        dialog.keep_runs.setValue(1)
        dialog.accept()
        saved = json.loads((finished / PROJECT_FILE).read_text())
        assert saved["settings"]["keep_runs"] == 1 and saved["steps"]["count"]["history"] == []
        assert len(list((finished / "steps" / "count").iterdir())) == 1
    finally:
        _close(w)


def test_opening_asks_for_moved_data_once_and_offers_a_stale_lock(qtbot, finished: Path, mini_session: Path,
                                                                  tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from tomoguide.pages import wizard

    new_place = tmp_path / "disk2" / "session"
    shutil.move(mini_session, new_place)
    asked: list[str] = []
    monkeypatch.setattr(wizard, "ask_folder", lambda parent, title, start: asked.append(title) or str(new_place))
    proj = wizard.open_project_interactive(finished)
    assert proj is not None and proj.missing_data == [] and len(asked) == 1
    assert proj.params("import_movies").files_dir == str(new_place)
    assert proj.is_up_to_date("after")  # the same data: nothing to run again
    proj.close()
    again = wizard.open_project_interactive(finished)  # asked once: remembered
    assert again is not None and len(asked) == 1
    again.close()
    # a lock written on another machine: its owner is named and its removal offered
    (finished / LOCK_FILE).write_text(json.dumps({"pid": 77, "host": "node-3", "machine": "f" * 32,
                                                  "since": "2026-12-01T10:00:00+00:00", "command": "tomoguide run"}))
    questions: list[str] = []
    monkeypatch.setattr(QMessageBox, "question", lambda parent, title, text, *a: questions.append(text)
                        or QMessageBox.StandardButton.Yes)
    broken = wizard.open_project_interactive(finished)
    assert broken is not None and "pid 77 on node-3" in questions[-1] and "Break the lock?" in questions[-1]
    assert json.loads((finished / LOCK_FILE).read_text())["host"] != "node-3"
    broken.close()
    assert not (finished / LOCK_FILE).exists()
