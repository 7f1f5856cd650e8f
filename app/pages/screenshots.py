"""``tomoguide screenshots PROJECT_DIR --out DIR``: every page of the wizard rendered offscreen to PNG files.

Files: ``00_start.png`` (the start screen), then ``NN_<step_id>.png`` per step in workflow order (NN from 01),
each of the whole wizard window at a fixed size with that step's page shown, and last ``NN_summary.png``, the
summary page after the last step. 3D previews render through vispy's
EGL backend (see :mod:`tomoguide.widgets.volume_view`), so they appear in the images too.
The project is opened read-only when another program holds it; nothing in it is changed either way.
"""

from __future__ import annotations

import os
from pathlib import Path

from PySide6.QtCore import QCoreApplication, QSize
from PySide6.QtWidgets import QApplication

SHOT_SIZE = QSize(1320, 860)


def offscreen_app(name: str = "tomoguide-screenshots") -> QApplication:
    """The running QApplication, or a new one named ``name``; without a display (no DISPLAY or WAYLAND_DISPLAY
    and no QT_QPA_PLATFORM set) it renders offscreen."""
    app = QApplication.instance()
    if app is None:
        if "QT_QPA_PLATFORM" not in os.environ and not (os.environ.get("DISPLAY")
                                                         or os.environ.get("WAYLAND_DISPLAY")):
            os.environ["QT_QPA_PLATFORM"] = "offscreen"
        app = QApplication([name])
    assert isinstance(app, QApplication)
    return app


def _settle(rounds: int = 5) -> None:
    for _ in range(rounds):
        QCoreApplication.processEvents()


def render_all(project_dir: Path, out_dir: Path) -> list[Path]:
    """Render the start screen and every step page of the project's wizard to ``out_dir``; returns the files."""
    from tomoguide.pages.app import StartScreen
    from tomoguide.pages.wizard import WizardWindow
    from tomoguide.project import Project, ProjectLockedError

    offscreen_app()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    start = StartScreen()
    start.resize(QSize(1000, 600))
    start.show()
    _settle()
    path = out_dir / "00_start.png"
    start.grab().save(str(path))
    written.append(path)
    start.close()
    start.deleteLater()

    try:
        project = Project.open(project_dir)
    except ProjectLockedError:
        project = Project.open(project_dir, readonly=True)
    window = WizardWindow(project, remember_geometry=False)
    try:
        window.resize(SHOT_SIZE)
        window.show()
        for i, step_cls in enumerate(window.steps):
            window.go_to(i)
            _settle()
            path = out_dir / f"{i + 1:02d}_{step_cls.id}.png"
            if not window.grab().save(str(path)):
                raise OSError(f"{path}: could not write the screenshot")
            written.append(path)
        window.go_to(window.summary_index)
        _settle()
        path = out_dir / f"{window.summary_index + 1:02d}_summary.png"
        if not window.grab().save(str(path)):
            raise OSError(f"{path}: could not write the screenshot")
        written.append(path)
    finally:
        window.close()
        window.deleteLater()
        project.close()
        _settle()
    return written
