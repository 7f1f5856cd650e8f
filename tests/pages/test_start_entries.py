"""The start screen's entry points (issue 17, item 2): raw movies, tilt series without movies, an existing
alignment and CTF, particles (disabled until extraction offers that source); each sets the parameters its entry
needs, and the wizard's step list shows which steps take their results from elsewhere."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import Qt

from tomoguide.pages.app import ENTRIES, AppController, entry_params, particles_entry
from tomoguide.project import Project


def _stacks(folder: Path) -> Path:
    """One IMOD-style tilt series: TS_01.st (5 images, 2 Å/px in the header) and TS_01.rawtlt."""
    import mrcfile

    folder.mkdir(parents=True, exist_ok=True)
    with mrcfile.new(folder / "TS_01.st", overwrite=True) as m:
        m.set_data(np.random.default_rng(0).normal(size=(5, 64, 64)).astype(np.float32))
        m.voxel_size = 2.0
    (folder / "TS_01.rawtlt").write_text("-6\n-3\n0\n3\n6\n")
    return folder


def test_entry_params(tmp_path: Path) -> None:
    stacks = _stacks(tmp_path / "stacks")
    ali = tmp_path / "ali"
    ali.mkdir()
    assert entry_params("tilt series", data=str(stacks)) == {
        "import_movies": {"source": "tilt series", "files_dir": str(stacks.resolve())}}
    p = entry_params("alignment", data=str(stacks), alignment=str(ali))
    assert p["align"] == {"source": "files", "alignment_dir": str(ali.resolve())}
    assert p["ctf_estimate"] == {"source": "files", "ctf_dir": str(ali.resolve())}  # empty CTF folder: the same
    with pytest.raises(ValueError, match="alignment files"):
        entry_params("alignment", data=str(stacks), alignment=str(tmp_path / "nowhere"))
    if particles_entry() is None:
        with pytest.raises(ValueError, match="not available"):
            entry_params("particles", particles=str(ali))
    # every parameter set validates in a project
    Project.create(tmp_path / "p", params=p).close()


def test_start_screen_entries_create_projects(qtbot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    controller = AppController()
    qtbot.addWidget(controller.start)
    start = controller.start
    start.show()
    assert [k for k, *_ in ENTRIES] == list(start.entry_buttons)
    assert start.entry() == "movies" and start.pattern_edit.isVisible() and not start.alignment_edit.isVisible()
    particles = start.entry_buttons["particles"]
    assert particles.isEnabled() == (particles_entry() is not None)
    if not particles.isEnabled():
        assert "Not available yet" in particles.toolTip()

    start.entry_buttons["alignment"].setChecked(True)
    assert start.alignment_edit.isVisible() and start.ctf_edit.isVisible() and not start.pattern_edit.isVisible()
    assert "aligned the tilt series elsewhere" in start.entry_help.text()
    if os.environ.get("TOMOGUIDE_SCREENSHOT_DIR"):
        start.grab().save(str(Path(os.environ["TOMOGUIDE_SCREENSHOT_DIR"]) / "start_entries.png"))
    stacks = _stacks(tmp_path / "stacks")
    start.movies_edit.setText(str(stacks))
    start.project_edit.setText(str(tmp_path / "p_ali"))
    qtbot.mouseClick(start.create_button, Qt.MouseButton.LeftButton)
    assert "alignment files" in start.new_message.text() and controller.wizards == []
    ali = tmp_path / "ali"
    ali.mkdir()
    start.alignment_edit.setText(str(ali))
    try:
        with qtbot.waitSignal(controller.project_opened, timeout=5000) as opened:
            qtbot.mouseClick(start.create_button, Qt.MouseButton.LeftButton)
        window = opened.args[0]
        proj = window.project
        assert proj.data.steps["align"].params["source"] == "files"
        assert proj.data.steps["ctf_estimate"].params["ctf_dir"] == str(ali.resolve())
        texts = [window.step_list.item(i).text() for i in range(len(window.steps))]
        assert texts[0].endswith("· tilt series") and texts[1].endswith("· imported")
        assert next(t for t in texts if "Tilt-series alignment" in t or t.split(". ", 1)[1].startswith("Align")) \
            .endswith("· from files")
        assert any("CTF estimation on tilt series  · from files" in t for t in texts)
        assert not any(t.endswith("· not needed") for t in texts)
        window.close()

        start.entry_buttons["tilt series"].setChecked(True)
        assert not start.alignment_edit.isVisible()
        start.project_edit.setText(str(tmp_path / "p_ts"))
        with qtbot.waitSignal(controller.project_opened, timeout=5000) as opened:
            qtbot.mouseClick(start.create_button, Qt.MouseButton.LeftButton)
        proj = opened.args[0].project
        assert proj.data.steps["import_movies"].params["source"] == "tilt series"
        assert proj.data.steps["align"].params["source"] == "patch tracking"
        # the import page says what it found before the run
        ok = proj.params("import_movies")
        from tomoguide.steps.import_tilt_series import survey_text

        assert "TS_01: TS_01.st, 5 images 64×64 px" in survey_text(ok) and "2 Å (MRC header)" in survey_text(ok)
    finally:
        controller.close_all()


def test_step_list_marks_steps_an_entry_does_not_need(qtbot, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """With extraction needing no picking (the particles entry, simulated by patching its hook), the steps only
    picking needed are greyed "· not needed" and Next passes them; extraction carries its origin badge."""
    from tomoguide.pages.wizard import WizardWindow
    from tomoguide.steps.extract import Extract

    monkeypatch.setattr(Extract, "inputs_for", classmethod(
        lambda cls, p, po=None: ("exclude",) if p.dimensionality == "2D" else cls.inputs))
    monkeypatch.setattr(Extract, "origin_for", classmethod(
        lambda cls, p, po=None: "from files" if p.dimensionality == "2D" else None))
    proj = Project.create(tmp_path / "p", params={"extract": {"dimensionality": "2D"}})
    window = WizardWindow(proj, remember_geometry=False)
    qtbot.addWidget(window)
    try:
        texts = {s.id: window.step_list.item(i).text() for i, s in enumerate(window.steps)}
        for sid in ("ctf_correct", "preprocess_for_reconstruction", "reconstruct", "pick"):
            assert texts[sid].endswith("· not needed"), texts[sid]
        assert texts["extract"].endswith("· from files") and not texts["exclude"].endswith("needed")
        assert "Not needed" in window.step_list.item([s.id for s in window.steps].index("pick")).toolTip()
        window.go_to([s.id for s in window.steps].index("pick"))
        assert window.next_button.isEnabled()  # nothing to run here
        window.go_to([s.id for s in window.steps].index("exclude"))
        assert not window.next_button.isEnabled()  # a needed step that is not done
        # the titles with their badges are shown whole
        fm = window.step_list.fontMetrics()
        assert window.step_list.width() >= max(fm.horizontalAdvance(t) for t in texts.values())
    finally:
        window.close()
        proj.close()
