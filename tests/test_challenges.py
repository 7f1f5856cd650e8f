"""A trainer's session (issue 16): ``tomoguide simulate --challenge NAME`` data sets with a planted problem and an
answer key, run with the defaults, and the scorer honouring the key (the planted dark view must be excluded, the
true pixel size typed over the header's, the gain applied the right way round, ...).

Reduced size: the tiny preset's physics (seconds per data set). The fast tests cover the answer-key kinds that
need only the first steps; the others (``slow``) run each challenge up to the step that shows its problem.
"""

from __future__ import annotations

import json
from pathlib import Path

import mrcfile
import pytest

from tomoguide import challenges, score, synth
from tomoguide.cli import main as cli_main
from tomoguide.cli import run_steps
from tomoguide.compute.io import mdoc as mdoc_io
from tomoguide.project import Project


def _challenge(name: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny challenge simulated with the command line (answer key included): ``ROOT/data``, ``ROOT/truth``."""
    root = tmp_path_factory.mktemp(f"challenge_{name}")
    assert cli_main(["simulate", "--challenge", name, "--preset", "tiny", "--out", str(root)]) == 0
    return root


def _new_project(root: Path, name: str = "project") -> Path:
    assert cli_main(["new", str(root / name), "--movies", str(root / "data")]) == 0
    return root / name


def _answers(project: Path, steps: list[str]) -> list[score.Measure]:
    with Project.open(project, readonly=True) as proj:
        sc = score.score_project(proj, steps=steps)
    assert sc.challenge is not None
    return [m for s in sc.steps for m in s.measures if m.answer_key]


# ---------------------------------------------------------------------------------------------------------------
# the list, the parameters, the answer key
# ---------------------------------------------------------------------------------------------------------------


def test_every_challenge_has_valid_parameters_at_both_sizes() -> None:
    assert set(challenges.CHALLENGES) == {"dark_view", "tracking_jump", "gain_rotated", "axis_off",
                                          "axis_inverted", "thick_ice", "few_particles", "wrong_pixel_size"}
    for name, c in challenges.CHALLENGES.items():
        small = challenges.challenge_params(name, "small")
        tiny = challenges.challenge_params(name, "tiny")
        assert small.n_series == 1 and small.image_nx_px == 1024 and tiny.image_nx_px == 512
        assert c.checks and all(ch["step"] in score._SCORERS for ch in c.checks)
        assert c.brief and c.story and c.title
    assert challenges.challenge_params("axis_inverted").mdoc_axis_deg() == pytest.approx(-95.0)
    assert challenges.challenge_params("wrong_pixel_size", "tiny").stated_pixel_size_A == 2.2
    with pytest.raises(KeyError, match="unknown challenge 'nope'"):
        challenges.challenge_params("nope")


def test_simulate_challenge_list_and_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert cli_main(["simulate", "--challenge", "--list"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {n}: " in out for n in challenges.CHALLENGES)
    assert cli_main(["simulate", "--list"]) == 0
    assert "wrong_pixel_size" in capsys.readouterr().out
    assert cli_main(["simulate", "--challenge", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown; choose one of dark_view" in capsys.readouterr().err
    assert cli_main(["simulate", "--challenge", "dark_view", "--scenario", "inverted_axis", "--out", str(tmp_path)]) == 2


def test_answer_key_reader_refuses_damage(tmp_path: Path) -> None:
    assert challenges.read_answer_key(tmp_path) is None
    (tmp_path / "answer_key.json").write_text('{"items": [{"step": "exclude"}]}')
    with pytest.raises(ValueError, match=r"answer_key.json: items.0: needs 'kind' and 'step'"):
        challenges.read_answer_key(tmp_path)
    (tmp_path / "answer_key.json").write_text("{")
    with pytest.raises(ValueError, match="answer_key.json: not readable"):
        challenges.read_answer_key(tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# the planted problems, found or missed
# ---------------------------------------------------------------------------------------------------------------


def test_wrong_pixel_size_must_be_typed_over(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The files say 2.2 Å, the truth is 2.0 Å: with the defaults the answer is poor (and the pixel-size figure);
    typing 2.0 makes it good."""
    root = _challenge("wrong_pixel_size", tmp_path_factory)
    summary = json.loads((root / "truth" / "summary.json").read_text())
    assert summary["planted"]["pixel_size"] == {"true_A": 2.0, "stated_A": 2.2}
    assert summary["params"]["pixel_size_A"] == 2.0
    doc = mdoc_io.read_mdoc(root / "data" / "TS_01" / "TS_01.mdoc")
    assert float(doc.global_fields["PixelSpacing"]) == pytest.approx(2.2)
    assert all(s.pixel_spacing_A == pytest.approx(2.2) for s in doc.sections)
    movie = next((root / "data" / "TS_01").glob("*.mrc"))
    with mrcfile.open(movie, header_only=True) as m:
        assert float(m.voxel_size.x) == pytest.approx(2.2, abs=1e-4)
    key = json.loads((root / "truth" / "answer_key.json").read_text())
    assert key["items"] == [{"kind": "pixel_size", "step": "import_movies", "max_error_pct": 0.5, "id": "pixel_size",
                             "true_A": 2.0, "stated_A": 2.2,
                             "what": "true pixel size 2 Å, the files say 2.2 Å"}]
    project = _new_project(root)
    assert run_steps(project, until="import_movies", quiet=True) == 0
    [answer] = _answers(project, ["import_movies"])
    assert answer.grade == "poor" and answer.value is False and "2.2 Å used" in answer.text
    with Project.open(project, readonly=True) as proj:
        sc = score.score_project(proj, steps=["import_movies"])
    assert sc.measure("import.pixel_size").grade == "poor" and sc.measure("import.pixel_size").value == \
        pytest.approx(10.0)
    assert run_steps(project, only="import_movies", quiet=True, sets={"import_movies": {"pixel_size_A": 2.0}}) == 0
    [answer] = _answers(project, ["import_movies"])
    assert answer.grade == "good" and answer.text == "2 Å used"


def test_dark_view_must_be_excluded(tmp_path_factory: pytest.TempPathFactory) -> None:
    """With the defaults the planted dark view is suggested and excluded (good); a trainee who keeps it (the
    'keep' field) gets poor on the answer key and on the exclusion figure — a bad view kept."""
    root = _challenge("dark_view", tmp_path_factory)
    key = json.loads((root / "truth" / "answer_key.json").read_text())
    [item] = key["items"]
    assert (item["kind"], item["nominal_tilt_deg"], item["view_number"]) == ("exclude_view", 20.0, 6)
    project = _new_project(root)
    assert run_steps(project, until="exclude", quiet=True) == 0
    with Project.open(project, readonly=True) as proj:
        sc = score.score_project(proj, steps=["motion_ctf", "exclude"])
    [answer] = [m for m in sc.step("exclude").measures if m.answer_key]
    assert answer.grade == "good" and answer.text.startswith("excluded (suggested)")
    assert answer.label == "answer key: TS_01, view 6 (+20.0°)"
    assert sc.measure("exclude.planted").grade == "good"
    assert "+20°" in sc.measure("motion_ctf.frame_shifts").text  # the dark movie was flagged, left out
    assert run_steps(project, only="exclude", quiet=True, sets={"exclude": {"keep": "TS_01: 6"}}) == 0
    with Project.open(project, readonly=True) as proj:
        spoiled = score.score_project(proj, steps=["exclude"])
    [answer] = [m for m in spoiled.step("exclude").measures if m.answer_key]
    assert answer.grade == "poor" and answer.text.startswith("kept (suggested)")
    assert spoiled.measure("exclude.planted").grade == "poor"
    assert spoiled.step("exclude").grade == "poor"


def test_gain_orientation_answer(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A gain stored rotated by 90°: the defaults detect and use it (good); typed switches that leave it as stored
    are poor."""
    root = _challenge("gain_rotated", tmp_path_factory)
    assert (root / "data" / "CountRef_session.mrc").is_file()
    project = _new_project(root)
    assert run_steps(project, until="motion_ctf", quiet=True) == 0
    [answer] = _answers(project, ["motion_ctf"])
    assert answer.grade == "good" and "true 'transpose + flip X'" in answer.text
    assert run_steps(project, only="motion_ctf", quiet=True, sets={"motion_ctf": {
        "gain_orientation_auto": False, "gain_transpose": False, "gain_flip_x": False, "gain_flip_y": False}}) == 0
    [answer] = _answers(project, ["motion_ctf"])
    assert answer.grade == "poor" and answer.text.startswith("used 'as stored'")


# each remaining challenge with the defaults up to the step that shows its problem (tiny size)
SLOW_CASES = [
    ("axis_off", "align", "good"),
    ("axis_inverted", "ctf_estimate", "good"),
    ("tracking_jump", "exclude", "good"),
    ("thick_ice", "reconstruct", "good"),
    ("few_particles", "pick", "good"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "step", "expected"), SLOW_CASES)
def test_challenge_runs_with_defaults(name: str, step: str, expected: str,
                                      tmp_path_factory: pytest.TempPathFactory) -> None:
    root = _challenge(name, tmp_path_factory)
    project = _new_project(root)
    assert run_steps(project, until=step, quiet=True) == 0
    answers = _answers(project, [step])
    assert answers and all(a.grade == expected for a in answers), [(a.label, a.grade, a.text) for a in answers]


def test_scenario_options_stay_the_truth() -> None:
    """The stated pixel size changes only what the files say: the physics (true pixel size) is the small preset's."""
    p = challenges.challenge_params("wrong_pixel_size")
    assert p.pixel_size_A == synth.PRESETS["small"].pixel_size_A == 2.0
    assert synth.SimParams().stated_pixel_size_A is None
