"""``tomoguide class-report``: several trainees' scores in ONE self-contained HTML file with figures (issue 16)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tomoguide import report, score
from tomoguide.cli import main as cli_main
from tomoguide.project import Project

VOID = {"meta", "br", "link", "img", "input", "hr", "col"}


class _Balance(HTMLParser):
    """Checks that every opened element (outside SVG's self-closed ones) is closed in order."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list) -> None:
        pass

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1] if self.stack else 'nothing'}")
        else:
            self.stack.pop()


@pytest.fixture(scope="module")
def tiny_score(tiny_project_root: Path, tiny_dataset: Path) -> score.ProjectScore:
    """The tiny demo's score (the truth given: the fixture's data copy has none beside it)."""
    with Project.open(tiny_project_root / "project", readonly=True) as proj:
        return score.score_project(proj, tiny_dataset / "truth", found="given")


def test_svg_plot_maps_values_to_the_frame() -> None:
    svg = report.svg_plot([{"x": [0.0, 1.0], "y": [0.0, 1.0], "label": "a<b", "colour": "#123456"}],
                          x_range=(0.0, 1.0), y_range=(0.0, 1.0), x_label="x", y_label="y", width=200, height=100,
                          legend=True)
    root = ET.fromstring(svg)  # well-formed XML, the label escaped
    ns = "{http://www.w3.org/2000/svg}"
    line = root.find(f"{ns}polyline")
    assert line is not None
    # frame: left 58, right 14, top 10, bottom 44 -> x 58..186, y 10..56
    assert line.get("points") == "58.0,56.0 186.0,10.0"
    assert any(t.text == "a<b" for t in root.iter(f"{ns}text"))
    assert root.get("height") == "120"  # the legend below the plot adds its row


def test_render_report_three_projects(tiny_score: score.ProjectScore) -> None:
    """Three trainees (the tiny demo's score under three names, one with a spoiled pick): one HTML page with the
    summary, the per-step grade table, the FSC and defocus figures, the details and the thresholds, offline."""
    a = tiny_score.model_copy(deep=True)
    a.name = "Ada"
    b = tiny_score.model_copy(deep=True)
    b.name = "Ben"
    c = tiny_score.model_copy(deep=True)
    c.name = "Cy"
    pick = c.step("pick")
    pick.measures[0] = pick.measures[0].model_copy(update={"value": 25.0, "grade": "poor", "text": "4 of 16"})
    pick.grade = "poor"
    page = report.render_report([a, b, c], title="Course 1")
    assert page.startswith("<!DOCTYPE html>") and page.count("<html") == 1
    assert "<script" not in page and "src=" not in page and "href=" not in page
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", page)  # nothing fetched: offline
    checker = _Balance()
    checker.feed(page)
    assert not checker.errors and checker.stack == [], (checker.errors, checker.stack)
    for svg in re.findall(r"<svg.*?</svg>", page, flags=re.S):
        ET.fromstring(svg)
    n_defocus = len(re.findall(r"aria-label=\"(Ada|Ben|Cy)\"", page))
    assert n_defocus == 3
    has_maps = bool(tiny_score.figures.get("fsc"))
    assert page.count("<svg") == 3 + (2 if has_maps else 0)
    table = page[page.index("<table class='grades'>"):page.index("</table>", page.index("<table class='grades'>"))]
    assert table.count("<th>Ada</th>") == 1 and "<th>Cy</th>" in table
    assert "true particles picked (recall)" in table
    assert f"background:{report.GRADE_COLOURS['poor']}' title='4 of 16" in table
    assert "The grades' thresholds" in page and score.THRESHOLD["align.shifts"].rule() in page
    assert "Course 1" in page


def test_class_report_cli_three_projects(tiny_project_root: Path, tiny_dataset: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report" / "class.html"
    project = str(tiny_project_root / "project")
    assert cli_main(["class-report", project, project, project, "--names", "Ada,Ben,Cy", "--out", str(out),
                     "--truth", str(tiny_dataset)]) == 0
    page = out.read_text(encoding="utf-8")
    assert all(f"<th>{n}</th>" in page for n in ("Ada", "Ben", "Cy"))
    assert "FSC of the final maps" in page and "Defocus against the tilt" in page
    assert cli_main(["class-report", project, "--names", "A,B", "--out", str(out)]) == 2
    assert "--names: 2 names for 1 projects" in capsys.readouterr().err
