"""The import page lists what the session folder holds before any run, and follows the parameters."""

from __future__ import annotations

from pathlib import Path

from tomoguide.pages.previews import ImportPreview
from tomoguide.project import Project


def test_import_page_lists_found_and_missing_before_the_run(qtbot, tmp_path: Path, mini_session: Path) -> None:  # type: ignore[no-untyped-def]
    victim = sorted(mini_session.glob("TS_01_*.mrc"))[0]
    victim.unlink()
    project = Project.create(tmp_path / "p", params={"import_movies": {"files_dir": str(mini_session)}})
    try:
        preview = ImportPreview(project, "import_movies")
        qtbot.addWidget(preview)
        text = preview.found.toPlainText()
        assert text.startswith("Found before the run:") and "2 tilt series" in text
        assert "movies: 4 of 5 found" in text and f"MISSING: {victim.name}" in text
        assert "tilt axis: 85° (mdoc title)" in text and preview.table.rowCount() == 0  # nothing imported yet
        project.set_params("import_movies", {"tilt_axis_deg": 84.0})
        preview.refresh()
        assert "tilt axis: 84° (typed; the mdoc says 85°)" in preview.found.toPlainText()
        project.set_params("import_movies", {"files_dir": ""})
        preview.refresh()
        assert "Choose the session folder" in preview.found.toPlainText()
    finally:
        project.close()
