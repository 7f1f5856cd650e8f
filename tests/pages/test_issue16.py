"""Issue 16 (items 3-6), driven as a person would: the summary page and the run's closing summary, tutorial values
with their reset, the demo presets that never warn about themselves, no "1" unit, the newcomer's stumbles (log,
help, step list, CTFFIND's 1D plot), the start screen listing projects made on the command line, and the message
when the wizard cannot start."""

from __future__ import annotations

import copy
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication

from tomoguide import cli, gui_check, results
from tomoguide.project import PROJECT_FILE, Project
from tomoguide.steps import registry

pytestmark = pytest.mark.gui


def saved(project_dir: Path) -> dict:
    return json.loads((project_dir / PROJECT_FILE).read_text())


def finished_copy(tiny_project_root: Path, tmp_path: Path) -> Path:
    """A copy of the session's tiny project (run to the end); skips when its last step did not finish."""
    steps = saved(tiny_project_root / "project")["steps"]
    if steps["refine_fine"]["status"] != "done":
        pytest.fail(f"the tiny project's refine_fine did not finish: {steps['refine_fine'].get('error')}")
    shutil.copytree(tiny_project_root, tmp_path / "root", symlinks=True)
    return tmp_path / "root" / "project"


def tiny_demo_project(tiny_dataset: Path, out: Path) -> Path:
    """``tomoguide demo --preset tiny`` set up on a copy of the tiny data (the simulation is reused)."""
    from tomoguide.demo import prepare_demo

    shutil.copytree(tiny_dataset, out)
    return prepare_demo(out, preset="tiny")


# ---------------------------------------------------------------------------------------------------------------
# item 3: the end of the workflow
# ---------------------------------------------------------------------------------------------------------------


def test_resolution_meaning_for_the_tiny_and_small_demos() -> None:
    tiny = " ".join(results.resolution_meaning(20.0, 8.0, 16, "O", demo_preset="tiny"))
    assert "20.0 Å from 16 particles at 8 Å voxels (Nyquist 16.0 Å" in tiny
    assert "16 particles the number of particles limits the resolution" in tiny
    assert "featureless" in tiny and "not a sign of a wrong symmetry" in tiny
    assert "The tiny demo has 16 particles and reaches about 20 Å: 20 Å from 16 particles at 8 Å voxels is what it " \
           "can give" in tiny
    assert "384 asymmetric units" in tiny  # 16 × 24 (O)
    worse = " ".join(results.resolution_meaning(40.0, 8.0, 16, "O", demo_preset="tiny"))
    assert "worse than it usually gives" in worse and "what it can give" not in worse
    demo = " ".join(results.resolution_meaning(5.9, 2.0, 300, "O", demo_preset="small"))
    assert "The small demo has 300 particles and reaches about 6 Å: 6 Å from 300 particles at 2 Å voxels is what " \
           "it can give" in demo and "clearly resolved" in demo and "1.5 × Nyquist" in demo
    small = " ".join(results.resolution_meaning(8.2, 4.0, 301, "O"))
    assert "reached the Nyquist limit" in small and "α-helices" in small
    short = " ".join(results.resolution_meaning(14.0, 4.0, 301, "O"))
    assert "stops short of the Nyquist limit (1.8 × Nyquist)" in short and "channels" in short
    assert results.symmetry_order("O") == 24 and results.symmetry_order("C1") == 1 and results.symmetry_order("I") == 60


def test_viewer_commands_found_on_path_or_given_as_a_command_line(tmp_path: Path) -> None:
    maps = [tmp_path / "map.mrc", tmp_path / "half 1.mrc"]
    found = {"chimerax": "/opt/ChimeraX/bin/chimerax"}
    cmds = {c.name: c for c in results.viewer_commands(maps, which=found.get)}
    assert cmds["ChimeraX"].found == "/opt/ChimeraX/bin/chimerax"
    assert cmds["ChimeraX"].argv == ["/opt/ChimeraX/bin/chimerax", str(maps[0]), str(maps[1])]
    assert cmds["napari"].found is None and cmds["napari"].command_line == f"napari {maps[0]}"
    assert cmds["3dmod"].command_line == f"3dmod {maps[0]}"
    assert "'" in cmds["ChimeraX"].command_line  # the path with a space is quoted, so the line can be pasted


def test_summary_page_after_the_last_step(qtbot, tiny_project_root: Path, tmp_path: Path, open_wizard,
                                          monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    project_dir = finished_copy(tiny_project_root, tmp_path)
    raw = saved(project_dir)
    raw["dataset"]["demo_preset"] = "tiny"
    (project_dir / PROJECT_FILE).write_text(json.dumps(raw, indent=1))
    monkeypatch.setattr(results.shutil, "which", lambda prog: "/usr/local/bin/chimerax" if prog == "chimerax" else None)
    window = open_wizard(project_dir)
    qtbot.waitExposed(window)
    # a finished project opens on its summary, the last entry of the step list
    assert window.current_index() == window.summary_index == len(registry.ids())
    page = window.summary_page
    assert page is not None and window.stack.currentWidget() is page
    assert window.step_list.item(window.summary_index).text().endswith("Summary: your map")
    assert window.nav_hint.text() == "The end of the workflow." and not window.next_button.isEnabled()

    s = page.summary
    assert s is not None and s.step_id == "refine_fine" and s.complete
    rec = raw["steps"]["refine_fine"]["metrics"]
    text = page.resolution_label.text()
    assert f"{rec['resolution_A']:.2f} Å" in text and f"Nyquist <b>{2 * rec['voxel_A']:.2f} Å</b>" in text
    assert f"{rec['n_particles']} particles" in text
    meaning = page.meaning_label.text()
    assert f"from {rec['n_particles']} particles at {rec['voxel_A']:g} Å voxels" in meaning
    assert "The tiny demo has 16 particles and reaches about 20 Å" in meaning
    # the files with their full paths, all there
    for role in ("map", "half1", "half2", "mask", "particles"):
        path = Path(page.path_edits[role].text())
        assert path.is_absolute() and path.is_file() and path.parent == s.folder
    # the FSC plot and the map
    x, y = page.fsc_plot.curve("masked")
    assert len(x) > 3 and y[0] > 0.9
    assert "final map" in page.map_view.title.text()
    # buttons
    opened: list = []
    monkeypatch.setattr(page, "open_url", lambda url: opened.append(url))
    monkeypatch.setattr(page, "start_program", lambda argv: opened.append(argv))
    qtbot.mouseClick(page.open_folder_button, Qt.MouseButton.LeftButton)
    assert Path(opened[-1].toLocalFile()) == s.folder
    chimerax = page.viewer_buttons["ChimeraX"]
    qtbot.waitUntil(lambda: chimerax.height() > 0, timeout=3000)  # laid out, as on screen
    assert chimerax.isEnabled()
    qtbot.mouseClick(chimerax, Qt.MouseButton.LeftButton)
    assert opened[-1] == ["/usr/local/bin/chimerax", str(s.files["map"]), str(s.files["half1"]),
                          str(s.files["half2"])]
    napari = page.viewer_buttons["napari"]
    assert not napari.isEnabled()  # not on PATH: the command line to use instead
    assert page.viewer_lines["napari"].text() == f"napari {s.files['map']}"
    qtbot.mouseClick(page.copy_paths_button, Qt.MouseButton.LeftButton)
    assert QGuiApplication.clipboard().text().splitlines() == [str(p) for p in s.files.values()]
    if results.export_usage() is None:  # no `tomoguide export` yet: the paths are the export
        assert "no export command yet" in page.export_label.text()
    else:
        assert "tomoguide export" in page.export_label.text()
    # Back to the last step, Next comes back to the summary
    window.go_back()
    assert window.current_page().step_id == "refine_fine"
    assert "Next shows the summary" in window.nav_hint.text() and window.next_button.isEnabled()
    qtbot.mouseClick(window.next_button, Qt.MouseButton.LeftButton)
    assert window.current_index() == window.summary_index


def test_summary_page_before_any_average(qtbot, project_dir: Path, open_wizard) -> None:  # type: ignore[no-untyped-def]
    window = open_wizard(project_dir)
    page = window.show_summary()
    assert page.summary is None and "No map yet" in page.status_label.text()
    assert "Import tilt-series movies" in page.status_label.text()
    assert not page.open_folder_button.isEnabled()
    assert window.nav_hint.text() == "The workflow is not finished yet."


def test_run_ends_with_the_summary(tiny_project_root: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    project_dir = finished_copy(tiny_project_root, tmp_path)
    assert cli.main(["run", str(project_dir)]) == 0  # every step up to date: skipped, then the summary
    out = capsys.readouterr().out
    s = saved(project_dir)["steps"]["refine_fine"]["metrics"]
    assert f"{s['resolution_A']:.2f} Å at FSC 0.143; Nyquist {2 * s['voxel_A']:.2f} Å" in out
    run_dir = project_dir.resolve() / saved(project_dir)["steps"]["refine_fine"]["run_dir"]
    for name in ("map.mrc", "half1.mrc", "half2.mrc"):
        assert str(run_dir / name) in out
    assert "What this resolution means:" in out and "chimerax " in out.lower()
    # a run that stops before the last step prints no summary
    assert cli.main(["run", str(project_dir), "--until", "pick"]) == 0
    assert "What this resolution means" not in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------------------
# item 4: tutorial values, presets, units
# ---------------------------------------------------------------------------------------------------------------


def test_tutorial_value_shown_while_it_differs_and_reset(qtbot, project_dir: Path, open_wizard) -> None:  # type: ignore[no-untyped-def]
    window = open_wizard(project_dir)
    window.go_to(registry.ids().index("extract"))
    page = window.current_page()
    form = page.form
    # empty (chosen from the data) differs from the tutorial's bin 6: shown, with why in the tooltip
    assert form.tutorial_shown("binning") == "tutorial: 6×"
    assert "1.35 Å pixels" in form.fields["binning"].tutorial_label.toolTip()
    assert form.tutorial_shown("box_px") == "tutorial: 128 px" and form.tutorial_shown("crop_px") == "tutorial: 64 px"
    assert form.tutorial_shown("dose_weighting") == ""  # no tutorial value recorded
    qtbot.mouseClick(form.fields["crop_px"].tutorial_reset, Qt.MouseButton.LeftButton)
    assert saved(project_dir)["steps"]["extract"]["params"]["crop_px"] == 64
    assert form.tutorial_shown("crop_px") == ""  # the same value now: hidden
    # a field at the tutorial's value: nothing shown until it is changed
    window.go_to(registry.ids().index("preprocess_for_alignment"))
    form = window.current_page().form
    assert form.tutorial_shown("binning") == ""
    form.set_value("binning", 8.0)
    assert form.tutorial_shown("binning") == "tutorial: 10×"
    assert saved(project_dir)["steps"]["preprocess_for_alignment"]["params"]["binning"] == 8.0
    qtbot.mouseClick(form.fields["binning"].tutorial_reset, Qt.MouseButton.LeftButton)
    assert saved(project_dir)["steps"]["preprocess_for_alignment"]["params"]["binning"] == 10.0
    assert form.tutorial_shown("binning") == ""
    # the field help names the tutorial's value and why the default differs
    window.go_to(registry.ids().index("import_movies"))
    page = window.current_page()
    page.show_field_help("tilt_axis_deg")
    assert "Tutorial: 85°" in page.help_view.toPlainText() and "reads each series' axis" in page.help_view.toPlainText()


def test_tutorial_values_recorded_where_workflow_md_differs() -> None:
    """workflow.md's values that differ from the defaults, or that the defaults choose from the data."""
    expected = {("extract", "binning"): 6.0, ("extract", "box_px"): 128, ("extract", "crop_px"): 64,
                ("extract_fine", "box_px"): 256, ("extract_fine", "crop_px"): 128, ("pick", "box_px"): 54,
                ("import_movies", "tilt_axis_deg"): 85.0, ("import_movies", "pattern"): "*.mdoc",
                ("initial_model", "n_minibatches"): 40, ("refine_fine", "initial_angular_step_deg"): 7.5}
    for (sid, name), value in expected.items():
        m = registry.get(sid).Params.meta()[name]
        assert m.has_tutorial and m.tutorial == value, (sid, name)
    for step_cls in registry.workflow():  # every recorded tutorial value is a valid value of its field
        for name, m in step_cls.Params.meta().items():
            if m.has_tutorial:
                step_cls.Params(**{name: m.tutorial})
                assert m.shows_tutorial(m.default) == (m.default != m.tutorial), (step_cls.id, name)
                assert not m.shows_tutorial(m.tutorial)


def test_the_tiny_demo_never_warns_about_its_own_values(qtbot, tiny_dataset: Path, tmp_path: Path,
                                                       open_wizard) -> None:  # type: ignore[no-untyped-def]
    from tomoguide.runner import StepRun

    project_dir = tiny_demo_project(tiny_dataset, tmp_path / "demo")
    deliberate = saved(project_dir)["dataset"]["deliberate"]
    assert deliberate["initial_model"]["n_minibatches"]["value"] == 8
    with Project.open(project_dir) as project:
        for sid in registry.ids():
            warnings = [i for i in StepRun(project, sid).check_issues() if i.level == "warning"]
            assert warnings == [], (sid, warnings)
            notes = [i for i in StepRun(project, sid).check_issues() if i.level == "info"]
            if sid in deliberate:
                assert notes and all("chosen for the tiny demo's 16 particles" in i.message for i in notes)
    window = open_wizard(project_dir)
    window.go_to(registry.ids().index("initial_model"))
    page = window.current_page()
    level, text = page.form.message("n_minibatches")
    assert level == "info" and text.startswith("ℹ Mini-batches = 8: chosen for the tiny demo's 16 particles — 8 "
                                               "mini-batches already show each particle several times")
    assert "warning" not in {page.form.message(n)[0] for n in page.form.fields}
    assert "⚠" not in page.issues_label.text()
    # the tutorial's 40, one click away; then the preset's note goes
    assert page.form.tutorial_shown("n_minibatches") == "tutorial: 40"
    qtbot.mouseClick(page.form.fields["n_minibatches"].tutorial_reset, Qt.MouseButton.LeftButton)
    assert saved(project_dir)["steps"]["initial_model"]["params"]["n_minibatches"] == 40
    assert page.form.message("n_minibatches") == ("", "")
    # the same value typed by hand in a project that is not the demo still warns
    params = registry.get("initial_model").Params(n_minibatches=8)
    assert [i.level for i in params.soft_issues()] == ["warning"]


def test_dimensionless_values_print_without_a_unit() -> None:
    seen = 0
    for step_cls in registry.workflow():
        for name, m in step_cls.Params.meta().items():
            lo, hi = m.suggest
            if m.unit != "1" or (lo is None and hi is None) or m.enabled_if:
                continue
            hard_lo, hard_hi = m.hard
            candidates = []
            if hi is not None:
                candidates.append(hi + 1 if isinstance(hi, int) else hi * 1.5 + 0.01)
            if lo is not None:
                candidates.append(lo - 1 if isinstance(lo, int) else lo * 0.5 - 0.01)
            inside = [c for c in candidates if (hard_lo is None or c >= hard_lo) and (hard_hi is None or c <= hard_hi)]
            if not inside:
                continue
            issues = step_cls.Params(**{name: inside[0]}).soft_issues()
            assert issues, (step_cls.id, name)
            for issue in issues:
                seen += 1
                assert not re.search(r"\d 1\b", issue.message), issue.message
    assert seen >= 10
    msg = registry.get("initial_model").Params(n_minibatches=8).soft_issues()[0].message
    assert msg == "Mini-batches = 8 is below the usual range (≥ 10); it is accepted, but check it."
    from tomoguide.steps.base import format_quantity

    assert format_quantity(8, "1") == "8" and format_quantity(85.0, "°") == "85°"
    assert format_quantity(6.0, "×") == "6×" and format_quantity(10, "Å") == "10 Å"


def test_field_help_has_no_unit_one(qtbot, project_dir: Path, open_wizard) -> None:  # type: ignore[no-untyped-def]
    window = open_wizard(project_dir)
    window.go_to(registry.ids().index("initial_model"))
    page = window.current_page()
    page.show_field_help("n_minibatches")
    text = page.help_view.toPlainText()
    assert "Mini-batches\n" in text and "Usual range: 10 – 200." in text and "(1)" not in text


# ---------------------------------------------------------------------------------------------------------------
# item 5: the newcomer's stumbles
# ---------------------------------------------------------------------------------------------------------------


def test_refinement_log_has_no_nan() -> None:
    from tomoguide.steps.refine import history_line

    line = history_line({"iteration": 1, "search": "global", "resolution_A": 20.4,
                         "mean_angle_change_deg": float("nan"), "mean_shift_change_A": 2.0, "other_A": math.inf})
    assert "nan" not in line.lower() and "inf" not in line.lower()
    assert "mean angle change — (global search)" in line and "resolution 20.4 Å" in line
    assert "mean angle change 3.14°" in history_line({"iteration": 2, "mean_angle_change_deg": 3.14})


def test_tiny_projects_logs_say_what_no_prior_means_and_no_nan(tiny_project_root: Path) -> None:
    steps = saved(tiny_project_root / "project")["steps"]
    for sid in ("initial_model", "refine", "refine_fine"):
        if steps[sid]["status"] != "done":
            pytest.fail(f"the tiny project's {sid} did not finish")
        log = "\n".join(steps[sid]["log"])
        assert "nan" not in log.lower(), (sid, log)
    log = "\n".join(steps["refine"]["log"])
    assert "no orientation priors" in log and "has no effect" in log  # the consequence, not a bare statement


def test_step_titles_are_shown_whole(qtbot, project_dir: Path, open_wizard) -> None:  # type: ignore[no-untyped-def]
    window = open_wizard(project_dir)
    lst = window.step_list
    assert lst.textElideMode() == Qt.TextElideMode.ElideNone
    fm = lst.fontMetrics()
    viewport = lst.viewport().width()
    titles = [lst.item(i).text() for i in range(lst.count())]
    assert "4. Bin and normalise for alignment" in titles and "13. Extract pseudo-subtomograms" in titles
    for i, title in enumerate(titles):
        need = fm.horizontalAdvance(title) + lst.iconSize().width() + 8
        assert need <= viewport, (title, need, viewport)
        assert lst.visualItemRect(lst.item(i)).width() >= need - 8


def test_help_shows_what_to_check_first(qtbot, project_dir: Path, open_wizard) -> None:  # type: ignore[no-untyped-def]
    window = open_wizard(project_dir)
    for sid in ("import_movies", "align", "pick", "refine"):
        window.go_to(registry.ids().index(sid))
        page = window.current_page()
        qtbot.waitExposed(page.help_view)
        text = page.help_view.toPlainText()
        assert text.index("What to check") < text.index("What it does"), sid
        doc = page.help_view.document()
        cursor = doc.find("What to check")
        assert not cursor.isNull()
        top = doc.documentLayout().blockBoundingRect(cursor.block()).top()
        assert top - page.help_view.verticalScrollBar().value() < page.help_view.viewport().height() - 20, sid


def test_averaging_help_explains_few_particles_not_wrong_symmetry() -> None:
    for sid in ("initial_model", "refine"):
        h = registry.get(sid).help
        assert "(wrong symmetry)" not in h and "too few particles or batches" not in h
        assert "16 particles" in h and "20 Å" in h


def test_fsc_legend_and_resolution_label_sit_below_the_plot(qtbot) -> None:  # type: ignore[no-untyped-def]
    from tomoguide.widgets.fsc_plot import FscPlot

    plot = FscPlot()
    qtbot.addWidget(plot)
    f = np.linspace(0.0, 1 / 16, 20)
    plot.set_curves(f, masked=np.cos(f * 40), unmasked=np.cos(f * 50), corrected=np.cos(f * 45),
                    resolution_A=20.0, note="from the masked, phase-randomisation corrected FSC")
    plot.show()
    for size in ((280, 250), (420, 300), (700, 460)):  # 280 × 250: the FSC tab of the averaging pages
        plot.resize(*size)
        qtbot.waitExposed(plot)
        qtbot.wait(20)
        axis_bottom = plot.plot.geometry().bottom()
        assert plot.legend_label.geometry().top() > axis_bottom, size
        assert plot.resolution_label.geometry().top() > plot.legend_label.geometry().bottom(), size
        assert plot.resolution_label.geometry().bottom() <= plot.height(), size
    assert "masked" in plot.legend_label.text() and "corrected FSC" in plot.resolution_label.toolTip()


def test_ctf_profile_1d_against_a_known_ctf() -> None:
    """The 1D profile of a spectrum simulated with a known CTF: the model's zeros where the CTF formula puts them,
    data and model in phase for the true defocus, out of phase for a wrong one."""
    from tomoguide.compute import ctf as ctfmod
    from tomoguide.compute.ctffit import CtfFit, PowerSpectrum, ctf_profile_1d

    rng = np.random.default_rng(3)
    b, px, u, v, ang = 512, 2.0, 31000.0, 29000.0, 30.0
    c2 = ctfmod.ctf_2d((b, b), px, u, v, ang, rfft=True, dtype=np.float64) ** 2
    kx, ky = ctfmod.frequency_grid((b, b), px, rfft=True)
    k = np.sqrt(kx**2 + ky**2)
    power = (1.0 / (1 + (k / 0.02) ** 2) + 0.3 + 0.5 * np.exp(-80 * k**2) * c2) * rng.exponential(1.0, c2.shape)
    spec = PowerSpectrum(power.astype(np.float32), px)
    truth = CtfFit(u, v, ang, fit_resolution_A=6.0, pixel_size_A=px)
    prof = ctf_profile_1d(spec, truth, res_range_A=(30.0, 6.0))
    assert prof.k_per_A[-1] == pytest.approx(1 / (2 * px)) and prof.band_per_A == (1 / 30, 1 / 6)
    # CTF² = 0 where χ + α = nπ, at the mean defocus (χ = π λ Δf k² − π Cs λ³ k⁴ / 2)
    lam = ctfmod.electron_wavelength_A(300.0)
    alpha = math.atan2(0.1, math.sqrt(1 - 0.01))
    kk = prof.k_per_A
    chi = math.pi * lam * 30000.0 * kk**2 - 0.5 * math.pi * 2.7e7 * lam**3 * kk**4
    np.testing.assert_allclose(prof.model, np.sin(chi + alpha) ** 2, atol=1e-9)
    assert prof.correlation() > 0.5
    band = (kk > 1 / 30) & (kk < 1 / 8)
    assert np.nanmedian(prof.ring_cc[band]) > 0.7
    assert np.isnan(prof.ring_cc[kk < 1 / 31]).all()
    wrong = copy.copy(truth)
    wrong.defocus_u_A, wrong.defocus_v_A = u + 2500.0, v + 2500.0
    bad = ctf_profile_1d(spec, wrong, res_range_A=(30.0, 6.0))
    assert bad.correlation() < 0.2 and np.nanmedian(bad.ring_cc[band]) < 0.3


@pytest.mark.parametrize("step_id", ["motion_ctf", "ctf_estimate"])
def test_both_ctf_pages_show_the_1d_fit(qtbot, tiny_project_root: Path, step_id: str) -> None:  # type: ignore[no-untyped-def]
    from tomoguide.pages.previews import make_preview

    with Project.open(tiny_project_root / "project", readonly=True) as project:
        if project.data.steps[step_id].status != "done":
            pytest.skip(f"{step_id} did not finish")
        preview = make_preview(project, step_id)
        qtbot.addWidget(preview)
        preview.resize(900, 800)
        preview.show()
        plot = preview.profile_plot
        assert plot.isVisible() and plot.profile is not None
        x, measured = plot.curve("measured")
        _, model = plot.curve("model")
        _, cc = plot.curve("cc")
        assert len(x) > 20 and len(cc) > 10 and np.all((model >= 0) & (model <= 1))
        i = preview.current_view()
        row = preview.data.ctf.iloc[i]
        assert plot.profile.fit_resolution_A == pytest.approx(float(row["rlnCtfMaxResolution"]))
        # the fit found on the data matches the data's own profile
        assert plot.profile.correlation() > 0.3, plot.caption.text()
        assert "fit resolution" in plot.caption.text()
        other = (i + 1) % preview.data.ctf.shape[0]
        preview.select_view(other)
        assert plot.profile.fit_resolution_A == pytest.approx(
            float(preview.data.ctf.iloc[other]["rlnCtfMaxResolution"]))


# ---------------------------------------------------------------------------------------------------------------
# projects made on the command line appear on the start screen
# ---------------------------------------------------------------------------------------------------------------


def test_start_screen_lists_projects_made_on_the_command_line(qtbot, mini_session: Path, tiny_dataset: Path,
                                                              tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tomoguide.pages.app import StartScreen

    new_dir = tmp_path / "from_new"
    assert cli.main(["new", str(new_dir), "--movies", str(mini_session), "--set", "pattern=*.mdoc"]) == 0
    demo_out = tmp_path / "demo"
    shutil.copytree(tiny_dataset, demo_out)  # the same simulation: reused, not redone
    assert cli.main(["demo", "--preset", "tiny", "--no-gui", "--out", str(demo_out), "--until", "import_movies"]) == 0
    start = StartScreen()
    qtbot.addWidget(start)
    start.show()
    listed = [start.recent_list.item(i).data(Qt.ItemDataRole.UserRole) for i in range(start.recent_list.count())]
    assert listed == [str((demo_out / "project").resolve()), str(new_dir.resolve())]
    # a project run from the command line comes first
    assert cli.main(["run", str(new_dir), "--until", "import_movies"]) == 0
    start.hide()
    start.show()  # shown again: the list is read again
    assert start.recent_list.item(0).data(Qt.ItemDataRole.UserRole) == str(new_dir.resolve())


def test_recent_list_lives_in_the_configured_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tomoguide import recent

    monkeypatch.setenv("TOMOGUIDE_CONFIG_DIR", str(tmp_path / "cfg"))
    project = tmp_path / "p"
    project.mkdir()
    (project / PROJECT_FILE).write_text("{}")
    recent.remember_project(project)
    assert json.loads((tmp_path / "cfg" / recent.RECENT_FILE).read_text())["projects"] == [str(project.resolve())]
    (tmp_path / "cfg" / recent.RECENT_FILE).unlink()
    (tmp_path / "cfg").chmod(0o500)  # a list that cannot be written is no error for the command
    try:
        recent.remember_project(project)
    finally:
        (tmp_path / "cfg").chmod(0o700)


# ---------------------------------------------------------------------------------------------------------------
# when the wizard cannot start
# ---------------------------------------------------------------------------------------------------------------


def test_missing_qt_libraries_are_named_with_their_apt_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gui_check.sys, "platform", "linux")
    missing = {"libxcb-cursor.so.0", "libEGL.so.1"}
    text = gui_check.gui_problem({"DISPLAY": ":0"}, loads=lambda so: so not in missing)
    assert text is not None
    assert "libxcb-cursor.so.0 (package libxcb-cursor0)" in text and "libEGL.so.1 (package libegl1)" in text
    assert "sudo apt-get install -y --no-install-recommends libgl1 libegl1" in text and "libxcb-cursor0" in text
    assert "--no-gui" in text and "no display" not in text
    # offscreen (screenshots): only the core libraries count
    assert gui_check.gui_problem({}, offscreen=True, loads=lambda so: so != "libxcb-cursor.so.0") is None
    # everything there, a display: the wizard can start
    assert gui_check.gui_problem({"DISPLAY": ":0"}, loads=lambda so: True) is None
    # no display
    text = gui_check.gui_problem({}, loads=lambda so: True)
    assert text is not None and "no display" in text and "xvfb-run" in text and "--no-gui" in text
    assert gui_check.gui_problem({"QT_QPA_PLATFORM": "offscreen"}, loads=lambda so: True) is None
    # a Wayland session does not need the X11 plugin's libraries
    wayland = {"WAYLAND_DISPLAY": "wayland-0", "DISPLAY": ":0", "XDG_SESSION_TYPE": "wayland"}
    assert gui_check.qt_platform(wayland) == "wayland" and gui_check.qt_platform({"DISPLAY": ":0"}) == "xcb"
    assert gui_check.gui_problem(wayland, loads=lambda so: so != "libxcb-cursor.so.0") is None
    # the packages named are those of .ci/run
    ci = (Path(__file__).resolve().parents[2] / ".ci" / "run").read_text()
    for pkg in gui_check.APT_PACKAGES:
        assert re.search(rf"(^|\s){re.escape(pkg)}(\s|$)", ci), pkg


def test_gui_command_says_what_is_missing_instead_of_crashing(monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("QT_QPA_PLATFORM", raising=False)
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.setattr(gui_check.sys, "platform", "linux")
    monkeypatch.setattr(gui_check, "library_loads", lambda so: so != "libxcb-icccm.so.4")
    started = []
    monkeypatch.setattr("tomoguide.pages.app.main", lambda project=None: started.append(project) or 0)
    assert cli.main(["gui"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("tomoguide: error: the wizard cannot start.")
    assert "libxcb-icccm.so.4 (package libxcb-icccm4)" in err and "tomoguide demo --no-gui" in err
    assert started == []
    # the demo says it before simulating anything, with the command that works without the wizard
    assert cli.main(["demo", "--preset", "tiny", "--out", "/nonexistent/demo"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "tomoguide demo --preset tiny --no-gui --out /nonexistent/demo" in err
    assert not Path("/nonexistent/demo").exists()


def test_import_error_names_the_package() -> None:
    text = gui_check.import_error_message(ImportError("libEGL.so.1: cannot open shared object file: No such file"))
    assert "libEGL.so.1 (package libegl1)" in text and "apt-get install" in text and "--no-gui" in text


def test_readme_set_up_says_the_same() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    setup = readme.split("## Set-up on a fresh machine", 1)[1].split("\n## ", 1)[0]
    assert "libxcb-cursor0" in setup and "--no-gui" in setup and "could not load the Qt platform plugin" in setup


# ---------------------------------------------------------------------------------------------------------------
# the truth panel on every step page (the score helper's TruthPanel), folded, only with a truth folder
# ---------------------------------------------------------------------------------------------------------------


def test_truth_panel_folded_on_every_page_of_simulated_data(qtbot, tiny_dataset: Path, project_dir: Path,
                                                            tmp_path: Path, open_wizard,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    truth_panel = pytest.importorskip("tomoguide.pages.truth_panel")
    refreshed: list[str] = []
    monkeypatch.setattr(truth_panel.TruthPanel, "refresh", lambda self, **_: refreshed.append(self.step_id))
    window = open_wizard(tiny_demo_project(tiny_dataset, tmp_path / "demo"))
    for i, sid in enumerate(registry.ids()):
        window.go_to(i)
        page = window.current_page()
        assert page.truth_toggle is not None and page.truth_panel is not None, sid
        assert page.truth_toggle.text() == "Check against the truth" and not page.truth_toggle.isChecked()
        assert page.truth_panel.isHidden()  # folded by default
    assert refreshed == []  # nothing scored while folded
    page = window.current_page()
    qtbot.mouseClick(page.truth_toggle, Qt.MouseButton.LeftButton)
    assert not page.truth_panel.isHidden() and refreshed == [registry.ids()[-1]]
    # real data (no truth folder): no panel at all
    other = open_wizard(project_dir)
    assert other.current_page().truth_toggle is None and other.current_page().truth_panel is None


def test_pick_histogram_title_fits_and_nothing_overlaps(qtbot, tiny_project_root: Path) -> None:  # type: ignore[no-untyped-def]
    """At the size the wizard gives the preview (about 510 × 590 px), the histogram's title lies inside its plot
    and the threshold line under it starts below the plot."""
    from tomoguide.pages.preview_pick import PickPreview

    with Project.open(tiny_project_root / "project", readonly=True) as project:
        if project.data.steps["pick"].status != "done":
            pytest.skip("pick did not finish")
        preview = PickPreview(project, "pick")
        qtbot.addWidget(preview)
        preview.resize(510, 590)
        preview.show()
        qtbot.waitExposed(preview)
        qtbot.wait(50)
        plot = preview.plot
        title = plot.getPlotItem().titleLabel
        assert title.item.boundingRect().width() <= plot.width(), title.text
        assert "drag the line" in title.text and "noise model" in title.text
        assert plot.height() >= 120
        assert preview.threshold_label.geometry().top() >= plot.geometry().bottom()


def test_ctf_profile_legend_below_its_axis(qtbot) -> None:  # type: ignore[no-untyped-def]
    from tomoguide.compute.ctffit import CtfProfile
    from tomoguide.widgets.ctf_plots import CtfProfilePlot

    plot = CtfProfilePlot()
    qtbot.addWidget(plot)
    k = np.linspace(0, 0.25, 257)
    prof = CtfProfile(k_per_A=k, measured=np.sin(k * 300) ** 2, model=np.sin(k * 300) ** 2,
                      ring_cc=np.where(k > 0.02, 0.9, np.nan), band_per_A=(0.02, 0.2), fit_resolution_A=5.0)
    plot.set_profile(prof, caption="CC 1.00 in the band (shaded) · fit resolution 5.0 Å")
    plot.show()
    for size in ((510, 160), (510, 260), (900, 300)):
        plot.resize(*size)
        qtbot.waitExposed(plot)
        qtbot.wait(20)
        assert plot.legend_label.geometry().top() >= plot.plot.geometry().bottom(), size
        assert plot.legend_label.geometry().bottom() <= plot.height(), size
        assert plot.legend_label.geometry().right() <= plot.caption.geometry().left(), size
    assert plot.fit_line.value() == pytest.approx(0.2)
    x, cc = plot.curve("cc")
    assert np.all(x >= 0.75 * 0.02) and np.allclose(cc, 0.9)


def test_export_commands_follow_the_command_line(tmp_path: Path) -> None:
    """Without `tomoguide export`, nothing is offered (the page shows the paths); with one that takes
    `--to FORMAT DIR`, one ready command line per format."""
    import argparse

    assert results.export_commands(tmp_path) == [] or results.export_usage() is not None
    parser = argparse.ArgumentParser(prog="tomoguide")
    sub = parser.add_subparsers(dest="command")
    e = sub.add_parser("export")
    e.add_argument("project")
    e.add_argument("--to", choices=["relion5", "imod"], required=True)
    e.add_argument("out")
    cmds = results.export_commands(tmp_path / "my project", parser)
    base = str((tmp_path / "my project").resolve())
    assert cmds == [f"tomoguide export '{base}' --to relion5 '{base}/export/relion5'",
                    f"tomoguide export '{base}' --to imod '{base}/export/imod'"]
    assert "usage: tomoguide export" in results.export_usage(parser)
