"""The "Check against the truth" panel (issue 16): one step's scores on a wizard page, as ``tomoguide score``."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tomoguide import score
from tomoguide.pages.truth_panel import GRADE_COLOURS, TruthPanel
from tomoguide.project import Project


@pytest.fixture
def simulated_project(tiny_project_root: Path, tiny_dataset: Path, tmp_path: Path) -> Path:
    """A copy of the tiny demo laid out as the simulator writes it: ROOT/data, ROOT/truth, ROOT/project."""
    shutil.copytree(tiny_project_root / "data", tmp_path / "data")
    shutil.copytree(tiny_dataset / "truth", tmp_path / "truth")
    shutil.copytree(tiny_project_root / "project", tmp_path / "project")
    return tmp_path / "project"


def test_panel_shows_the_steps_scores(qtbot, simulated_project: Path) -> None:  # type: ignore[no-untyped-def]
    with Project.open(simulated_project) as proj:
        panel = TruthPanel(proj, "pick")
        qtbot.addWidget(panel)
        panel.show()
        with qtbot.waitSignal(panel.scored, timeout=60_000) as sig:
            panel.refresh()
        result = sig.args[0]
        expected = score.score_step(proj, "pick", simulated_project.parent / "truth")
        assert panel.score is result and result.grade == "good"
        assert [m.model_dump() for m in result.measures] == [m.model_dump() for m in expected.measures]
        t = panel.table
        assert t.isVisible() and t.rowCount() == len(result.measures)
        rows = {t.item(r, 0).text(): r for r in range(t.rowCount())}
        r = rows["true particles picked (recall)"]
        assert t.item(r, 1).text() == "good"
        assert t.item(r, 2).text() == "16 of 16 true particles"
        assert t.item(r, 3).text() == "≥ 90 % good, ≥ 70 % acceptable, else poor"
        assert t.item(r, 1).background().color().name() == GRADE_COLOURS["good"]
        assert "Particles missed" in t.item(r, 0).toolTip()
        assert "against the truth" in panel.status_label.text() and "good" in panel.status_label.text()
        # found by looking: now recorded in the project
        assert proj.data.dataset["truth_dir"] == "../truth"
        # shown again: the result of this run is kept, nothing is measured again
        panel.refresh()
        assert panel._thread is None and panel.score is result
        assert panel.wait()


def test_panel_step_not_run_and_no_truth(qtbot, simulated_project: Path, mini_session: Path,  # type: ignore[no-untyped-def]
                                         tmp_path: Path) -> None:
    fresh = simulated_project.parent / "fresh"
    Project.create(fresh, params={"import_movies": {"files_dir": str(simulated_project.parent / "data")}}).close()
    with Project.open(fresh, readonly=True) as proj:
        panel = TruthPanel(proj, "align")
        qtbot.addWidget(panel)
        panel.refresh()
        assert "not run" in panel.status_label.text() and not panel.table.isVisibleTo(panel)
        assert panel.score is None and not panel.check_button.isEnabled()
    Project.create(tmp_path / "real", params={"import_movies": {"files_dir": str(mini_session)}}).close()
    with Project.open(tmp_path / "real", readonly=True) as proj:
        panel = TruthPanel(proj, "import_movies")
        qtbot.addWidget(panel)
        panel.refresh()
        assert panel.status_label.text().startswith("No truth to check against:")
        assert panel.truth_dir is None
