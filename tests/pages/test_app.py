"""The start screen and the application: recent projects, locked projects, the demo, main(), screenshots."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QImage
from PySide6.QtWidgets import QApplication, QMessageBox

from tomoguide.pages import app as app_module
from tomoguide.pages.app import AppController
from tomoguide.pages.screenshots import render_all
from tomoguide.pages.settings import add_recent_project, config_dir, recent_projects
from tomoguide.pages.wizard import WizardWindow
from tomoguide.project import LOCK_FILE, Project
from tomoguide.runner import StepRun, run_to_end

pytestmark = pytest.mark.gui


def test_settings_live_in_the_test_config_dir(tmp_path: Path, project_dir: Path) -> None:
    assert config_dir() == Path(os.environ["TOMOGUIDE_CONFIG_DIR"])
    other = tmp_path / "other"
    Project.create(other).close()
    add_recent_project(project_dir)
    add_recent_project(other)
    add_recent_project(project_dir)
    assert recent_projects() == [project_dir.resolve(), other.resolve()]
    (other / "project.json").unlink()
    assert recent_projects() == [project_dir.resolve()]  # gone projects are not offered


def test_open_recent_and_locked(qtbot, project_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    add_recent_project(project_dir)
    controller = AppController()
    qtbot.addWidget(controller.start)
    controller.show_start()
    assert controller.start.recent_list.count() == 1
    item = controller.start.recent_list.item(0)
    assert str(project_dir.resolve()) in item.text()
    try:
        with qtbot.waitSignal(controller.project_opened, timeout=5000) as opened:
            controller.start.recent_list.itemActivated.emit(item)  # double-click / Enter
        window: WizardWindow = opened.args[0]
        assert window.project.dir == project_dir.resolve()
        assert (project_dir / LOCK_FILE).exists()
        assert controller.open_project(project_dir) is window  # the same window, not a second writer
        # a project locked by another program: refused with the reason
        (project_dir / LOCK_FILE).write_text('{"pid": 1, "host": "elsewhere", "since": "now"}')
        window.close()
        (project_dir / LOCK_FILE).write_text('{"pid": 1, "host": "elsewhere", "since": "now"}')
        messages: list[str] = []
        questions: list[str] = []
        monkeypatch.setattr(QMessageBox, "warning", lambda parent, title, text: messages.append(text))
        # a lock from another machine cannot be checked from here: its removal is offered, "No" keeps it
        monkeypatch.setattr(QMessageBox, "question",
                            lambda parent, title, text, *a: questions.append(text) or QMessageBox.StandardButton.No)
        assert controller.open_project(project_dir) is None
        assert "elsewhere" in questions[-1] and "Break the lock?" in questions[-1]
        assert "locked by pid 1 on elsewhere" in messages[-1] and "another machine" in messages[-1]
    finally:
        controller.close_all()


def test_create_refuses_an_existing_project(qtbot, project_dir: Path, mini_session: Path) -> None:  # type: ignore[no-untyped-def]
    controller = AppController()
    qtbot.addWidget(controller.start)
    start = controller.start
    qtbot.mouseClick(start.create_button, Qt.MouseButton.LeftButton)
    assert "Choose the folder" in start.new_message.text()
    start.movies_edit.setText(str(mini_session))
    start.project_edit.setText(str(project_dir))
    qtbot.mouseClick(start.create_button, Qt.MouseButton.LeftButton)
    assert "already holds a project" in start.new_message.text()
    assert controller.wizards == []


def test_demo_runs_in_a_worker_and_opens_its_project(qtbot, tmp_path: Path, mini_session: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """The demo button: prepare_demo runs off the GUI thread with a progress dialog, then its project opens."""
    import threading

    import tomoguide.demo

    calls: list[tuple[Path, str, bool]] = []

    def fake_prepare_demo(out: Path, *, preset: str = "small", seed=None, progress_bar=None, progress=None):  # type: ignore[no-untyped-def]
        calls.append((Path(out), preset, threading.current_thread() is threading.main_thread()))
        for i in range(5):
            progress((i + 1) / 5, f"simulating {i + 1}/5")
        d = Path(out) / "project"
        Project.create(d, params={"import_movies": {"files_dir": str(mini_session)}}).close()
        return d

    monkeypatch.setattr(tomoguide.demo, "prepare_demo", fake_prepare_demo)
    controller = AppController()
    qtbot.addWidget(controller.start)
    controller.show_start()
    assert controller.demo_preset == "small"  # "try the demo" simulates the small data set
    controller.start.demo_edit.setText(str(tmp_path / "demo"))
    try:
        with qtbot.waitSignal(controller.demo_finished, timeout=10000) as finished:
            qtbot.mouseClick(controller.start.demo_button, Qt.MouseButton.LeftButton)
        assert finished.args == [tmp_path / "demo" / "project"]
        assert calls == [(tmp_path / "demo", "small", False)]  # in a worker thread
        window = controller.wizards[0]
        assert window.current_page().step_id == "import_movies"
        qtbot.waitUntil(lambda: controller.demo_worker is None, timeout=5000)
    finally:
        controller.close_all()


@pytest.mark.skipif(importlib.util.find_spec("tomoguide.synth") is None,
                    reason="tomoguide.synth (the simulator, issue 3) is not in this checkout yet")
def test_real_demo_tiny_reaches_a_working_import_preview(qtbot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    controller = AppController(demo_preset="tiny")
    qtbot.addWidget(controller.start)
    controller.show_start()
    controller.start.demo_edit.setText(str(tmp_path / "demo"))
    try:
        with qtbot.waitSignal(controller.demo_finished, timeout=60000) as finished:
            qtbot.mouseClick(controller.start.demo_button, Qt.MouseButton.LeftButton)
        assert finished.args[0] is not None
        page = controller.wizards[0].current_page()
        assert page.step_id == "import_movies"
        page.run_step()
        qtbot.waitUntil(lambda: not page.is_running(), timeout=60000)
        assert page.last_outcome == "done", page.error_label.text()
        assert page.preview.table.rowCount() >= 1 and page.preview.viewer.isEnabled()
    finally:
        controller.close_all()


def test_main_opens_the_project_on_the_first_step_not_done(qtbot, project_dir: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    seen: list[str] = []

    def fake_exec(self) -> int:  # type: ignore[no-untyped-def]
        for w in QApplication.topLevelWidgets():
            if isinstance(w, WizardWindow) and w.isVisible():
                seen.append(w.current_page().step_id)
                w.close()
        return 0

    monkeypatch.setattr(QApplication, "exec", fake_exec)
    assert app_module.main(project_dir) == 0
    assert seen == ["import_movies"]
    assert not (project_dir / LOCK_FILE).exists()


def test_screenshots_of_every_page(project_dir: Path, tmp_path: Path) -> None:
    with Project.open(project_dir) as project:
        run = StepRun(project, "import_movies")
        run.preflight()
        run_to_end(run)
    files = render_all(project_dir, tmp_path / "shots")
    from tomoguide.steps import registry

    expected = ["00_start.png"] + [f"{i:02d}_{sid}.png" for i, sid in enumerate(registry.ids(), start=1)]
    expected.append(f"{len(registry.ids()) + 1:02d}_summary.png")  # the summary page after the last step
    assert [f.name for f in files] == expected
    image = QImage(str(files[1]))
    assert (image.width(), image.height()) == (1320, 860)
    # not blank: many distinct colours (text, table, the frame sum in the viewer)
    colours = {image.pixel(x, y) for x in range(0, 1320, 7) for y in range(0, 860, 7)}
    assert len(colours) > 50
    assert not (project_dir / LOCK_FILE).exists()


def test_gui_command_starts_and_exits(tmp_path: Path, project_dir: Path) -> None:
    """`tomoguide gui PROJECT` in a fresh process (offscreen) opens the wizard and exits 0 once it is closed."""
    script = tmp_path / "run_gui.py"
    script.write_text(
        "import sys\n"
        "from PySide6.QtCore import QTimer\n"
        "from PySide6.QtWidgets import QApplication\n"
        "from tomoguide.cli import main\n"
        "app = QApplication(['tomoguide'])\n"
        "def close_all():\n"
        "    titles = [w.windowTitle() for w in app.topLevelWidgets() if w.isVisible()]\n"
        "    print('windows:', titles)\n"
        "    for w in app.topLevelWidgets():\n"
        "        w.close()\n"
        "QTimer.singleShot(1000, close_all)\n"
        "sys.exit(main(['gui', sys.argv[1]]))\n")
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    proc = subprocess.run([sys.executable, str(script), str(project_dir)], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "windows: ['tomoguide — project']" in proc.stdout
    assert not (project_dir / LOCK_FILE).exists()
