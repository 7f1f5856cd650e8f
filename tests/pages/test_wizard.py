"""The wizard driven as a person would: start screen, form, run, cancel, reopen, close while running."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QMessageBox

from tomoguide.pages.app import AppController
from tomoguide.pages.settings import recent_projects
from tomoguide.pages.wizard import DEFAULT_SIZE, WizardWindow
from tomoguide.project import LOCK_FILE, PROJECT_FILE, Project

pytestmark = pytest.mark.gui


def saved(project_dir: Path) -> dict:
    """project.json as on disk."""
    return json.loads((project_dir / PROJECT_FILE).read_text())


def run_dirs(project_dir: Path, step_id: str) -> list[str]:
    folder = project_dir / "steps" / step_id
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def click_run_and_wait(qtbot, page, timeout_ms: int = 20000) -> None:  # type: ignore[no-untyped-def]
    qtbot.mouseClick(page.run_button, Qt.MouseButton.LeftButton)
    assert page.is_running()
    qtbot.waitUntil(lambda: not page.is_running(), timeout=timeout_ms)


def test_new_project_change_fields_and_run_import(qtbot, mini_session: Path, tmp_path: Path,
                                                  two_steps) -> None:  # type: ignore[no-untyped-def]
    controller = AppController()
    start = controller.start
    qtbot.addWidget(start)
    controller.show_start()
    project_dir = tmp_path / "new_project"
    qtbot.keyClicks(start.movies_edit, str(mini_session))
    qtbot.keyClicks(start.project_edit, str(project_dir))
    assert start.pattern_edit.text() == "**/*.mdoc"  # the import step's default
    with qtbot.waitSignal(controller.project_opened, timeout=5000) as opened:
        qtbot.mouseClick(start.create_button, Qt.MouseButton.LeftButton)
    window: WizardWindow = opened.args[0]
    qtbot.addWidget(window)
    try:
        assert saved(project_dir)["steps"]["import_movies"]["params"]["files_dir"] == str(mini_session.resolve())
        assert recent_projects() == [project_dir.resolve()]
        assert not start.isVisible()
        page = window.current_page()
        assert page.step_id == "import_movies"  # lands on the first step not done
        assert not window.next_button.isEnabled()

        # a value outside the suggested range (100-300 kV): accepted, saved, warned
        form = page.form
        voltage = form.editor("voltage_kV")
        voltage.selectAll()
        qtbot.keyClicks(voltage, "50")
        qtbot.keyClick(voltage, Qt.Key.Key_Return)
        assert saved(project_dir)["steps"]["import_movies"]["params"]["voltage_kV"] == 50.0
        level, text = form.message("voltage_kV")
        assert level == "warning" and "below the usual range" in text
        assert "Saved" in page.saved_label.text()
        assert any(i.level == "warning" and i.field == "voltage_kV" for i in page.last_issues)

        # outside the hard bounds (20-1000 kV): refused with the reason, the saved value unchanged
        voltage.selectAll()
        qtbot.keyClicks(voltage, "5000")
        qtbot.keyClick(voltage, Qt.Key.Key_Return)
        level, text = form.message("voltage_kV")
        assert level == "error" and "20 to 1000 kV" in text
        assert "Not saved" in page.saved_label.text()
        assert saved(project_dir)["steps"]["import_movies"]["params"]["voltage_kV"] == 50.0
        # not a number: refused too
        voltage.selectAll()
        qtbot.keyClicks(voltage, "abc")
        qtbot.keyClick(voltage, Qt.Key.Key_Return)
        assert form.message("voltage_kV")[0] == "error" and "not a number" in form.message("voltage_kV")[1]
        form.set_value("voltage_kV", 300)
        assert form.message("voltage_kV") == ("", "")
        assert saved(project_dir)["steps"]["import_movies"]["params"]["voltage_kV"] == 300.0

        # run the import: the progress signal goes 0 -> 1, the preview fills
        fractions: list[float | None] = []
        qtbot.mouseClick(page.run_button, Qt.MouseButton.LeftButton)
        page.worker.progress.connect(lambda f, m: fractions.append(f))
        assert not page.form.isEnabled() and not window.step_list.isEnabled()
        with qtbot.waitSignal(page.running_changed, timeout=20000) as ended:
            pass
        assert ended.args == [False]
        assert not page.is_running() and page.last_outcome == "done"
        history = [f for f, _ in page.progress_history]
        assert history[0] == 0.0 and history[-1] == 1.0
        assert all(b >= a for a, b in zip(history, history[1:], strict=False))
        assert len(history) >= 1 + 10  # one report per tilt at least
        assert any("tilt" in m for _, m in page.progress_history)
        assert saved(project_dir)["steps"]["import_movies"]["status"] == "done"
        assert page.progress_bar.value() == 1000
        preview = page.preview
        assert preview.table.rowCount() == 2
        assert preview.table.item(0, 0).text() == "TS_01" and preview.table.item(0, 1).text() == "5"
        assert preview.table.item(0, 2).text() == "-6 … +6"
        assert preview.viewer.isEnabled() and preview.viewer.slider.maximum() == 4
        assert "TS_01: 5 tilts" in page.log_view.toPlainText()
        assert window.step_list.item(0).data(Qt.ItemDataRole.UserRole) == "done"
        assert window.next_button.isEnabled()

        # Next: the generic page of the echo step, with the metrics preview; run it
        qtbot.mouseClick(window.next_button, Qt.MouseButton.LeftButton)
        echo = window.current_page()
        assert echo.step_id == "echo" and window.back_button.isEnabled()
        click_run_and_wait(qtbot, echo)
        assert saved(project_dir)["steps"]["echo"]["metrics"]["n_tilts"] == 10
        rows = {echo.preview.table.item(r, 0).text(): echo.preview.table.item(r, 1).text()
                for r in range(echo.preview.table.rowCount())}
        assert rows["n_tilts"] == "10" and rows["per_series.TS_01"] == "5"

        # changing an import parameter makes both steps stale, and the page says so
        window.go_back()
        page = window.current_page()
        page.form.set_value("cs_mm", 2.0)
        assert "Now stale" in page.saved_label.text() and "Echo the tilt count" in page.saved_label.text()
        on_disk = saved(project_dir)["steps"]
        assert on_disk["import_movies"]["status"] == "stale" and on_disk["echo"]["status"] == "stale"
        assert window.step_list.item(1).data(Qt.ItemDataRole.UserRole) == "stale"
        assert not window.next_button.isEnabled()
        assert "stale" in page.preview.note.text()
    finally:
        controller.close_all()
    assert not (project_dir / LOCK_FILE).exists()


def test_refused_run_names_the_problem(qtbot, project_dir: Path, open_wizard) -> None:  # type: ignore[no-untyped-def]
    window = open_wizard(project_dir)
    page = window.current_page()
    page.form.set_value("files_dir", str(project_dir / "nowhere"))
    assert not page.run_button.isEnabled()
    assert "no such folder" in page.issues_label.text()
    level, text = page.form.message("files_dir")  # the check's error is shown next to its field too
    assert level == "error" and "no such folder" in text
    assert page.run_step() is False
    assert saved(project_dir)["steps"]["import_movies"]["status"] == "pending"


def test_cancel_restores_the_project(qtbot, project_dir: Path, open_wizard, slow_import: float) -> None:  # type: ignore[no-untyped-def]
    before = saved(project_dir)["steps"]["import_movies"]
    window = open_wizard(project_dir)
    page = window.current_page()
    qtbot.mouseClick(page.run_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: len(page.progress_history) >= 3, timeout=10000)
    assert saved(project_dir)["steps"]["import_movies"]["status"] == "running"
    assert window.step_list.item(0).data(Qt.ItemDataRole.UserRole) == "running"
    assert page.eta_label.text().endswith("left") or page.eta_label.text() == ""
    t0 = time.monotonic()
    window.cancel_current()  # what Esc does
    qtbot.waitUntil(lambda: not page.is_running(), timeout=5000)
    assert time.monotonic() - t0 < 2.0
    assert page.last_outcome == "cancelled" and "Cancelled" in page.progress_label.text()
    after = saved(project_dir)["steps"]["import_movies"]
    assert after == before
    assert run_dirs(project_dir, "import_movies") == []  # the partial run folder is gone
    assert page.form.isEnabled() and window.step_list.isEnabled()


def test_reopen_finds_the_same_state(qtbot, project_dir: Path, open_wizard, two_steps) -> None:  # type: ignore[no-untyped-def]
    window = open_wizard(project_dir)
    page = window.current_page()
    page.form.set_value("tilt_axis_deg", 84.5)
    click_run_and_wait(qtbot, page)
    window.go_next()
    window.current_page().form.set_value("method", "SIRT")
    window.current_page().form.set_value("iterations", 20)
    window.resize(760, 560)
    closed_size = window.size()
    assert closed_size.height() == 560 and closed_size != DEFAULT_SIZE
    window.close()
    assert not (project_dir / LOCK_FILE).exists()

    again = open_wizard(project_dir)
    assert again.size() == closed_size  # geometry remembered
    assert again.current_page().step_id == "echo"  # the first step that is not done
    assert again.current_page().form.values()["iterations"] == 20
    assert again.step_list.item(0).data(Qt.ItemDataRole.UserRole) == "done"
    again.go_back()
    imp = again.current_page()
    assert imp.form.values()["tilt_axis_deg"] == 84.5
    assert imp.preview.table.rowCount() == 2
    assert imp.preview.table.item(1, 6).text() == "84.5"
    assert "TS_02: 5 tilts" in imp.log_view.toPlainText()


def test_keyboard_navigation(qtbot, project_dir: Path, open_wizard, two_steps) -> None:  # type: ignore[no-untyped-def]
    window = open_wizard(project_dir)
    window.activateWindow()
    qtbot.waitUntil(lambda: window.isActiveWindow(), timeout=2000)
    page = window.current_page()
    qtbot.keyClick(window, Qt.Key.Key_R, Qt.KeyboardModifier.ControlModifier)  # Ctrl+R runs
    assert page.is_running()
    qtbot.waitUntil(lambda: not page.is_running(), timeout=20000)
    qtbot.keyClick(window, Qt.Key.Key_Right, Qt.KeyboardModifier.AltModifier)
    assert window.current_page().step_id == "echo"
    qtbot.keyClick(window, Qt.Key.Key_Left, Qt.KeyboardModifier.AltModifier)
    assert window.current_page().step_id == "import_movies"
    window.step_list.setCurrentRow(1)  # any step can be opened from the list
    assert window.current_page().step_id == "echo"


def test_escape_cancels(qtbot, project_dir: Path, open_wizard, slow_import: float) -> None:  # type: ignore[no-untyped-def]
    window = open_wizard(project_dir)
    window.activateWindow()
    qtbot.waitUntil(lambda: window.isActiveWindow(), timeout=2000)
    page = window.current_page()
    page.run_step()
    qtbot.waitUntil(lambda: len(page.progress_history) >= 2, timeout=10000)
    qtbot.keyClick(window, Qt.Key.Key_Escape)
    qtbot.waitUntil(lambda: not page.is_running(), timeout=3000)
    assert page.last_outcome == "cancelled"


def test_failed_run_shows_a_readable_error(qtbot, project_dir: Path, open_wizard, two_steps) -> None:  # type: ignore[no-untyped-def]
    window = open_wizard(project_dir)
    click_run_and_wait(qtbot, window.current_page())
    window.go_next()
    echo = window.current_page()
    echo.form.set_advanced_visible(True)
    echo.form.set_value("scale", 0.0)
    click_run_and_wait(qtbot, echo)
    assert echo.last_outcome == "failed"
    assert echo.error_box.isVisible()
    assert "scale: zero is not allowed here" in echo.error_label.text()
    assert not echo.error_details.isVisible()  # the traceback is folded
    assert "Traceback" in echo.error_details.toPlainText() and "ValueError" in echo.error_details.toPlainText()
    qtbot.mouseClick(echo.error_details_button, Qt.MouseButton.LeftButton)
    assert echo.error_details.isVisible()
    assert window.step_list.item(1).data(Qt.ItemDataRole.UserRole) == "failed"
    assert saved(project_dir)["steps"]["echo"]["status"] == "failed"


def test_close_while_running_loses_nothing(qtbot, project_dir: Path, open_wizard, slow_import: float,
                                           monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    window = open_wizard(project_dir)
    page = window.current_page()
    page.form.set_value("cs_mm", 2.5)  # a saved change before the run must survive
    before = saved(project_dir)["steps"]["import_movies"]
    page.run_step()
    qtbot.waitUntil(lambda: len(page.progress_history) >= 2, timeout=10000)

    answers = iter([QMessageBox.StandardButton.No, QMessageBox.StandardButton.Yes])
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: next(answers))
    assert window.close() is False  # "No": the window stays and the run goes on
    assert window.isVisible() and page.is_running()
    assert window.close() is True  # "Yes": cancel, wait, close
    assert not page.is_running()
    assert not (project_dir / LOCK_FILE).exists()
    assert run_dirs(project_dir, "import_movies") == []
    assert saved(project_dir)["steps"]["import_movies"] == before
    with Project.open(project_dir) as reopened:
        st = reopened.data.steps["import_movies"]
        assert st.status == "pending" and st.params["cs_mm"] == 2.5
