"""The form built from a step's declaration: widget per field type, units, help, conditions, bounds."""

from __future__ import annotations

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QCheckBox, QComboBox, QLineEdit, QPushButton

from tomoguide.pages.form import ParamForm, field_kind
from tomoguide.steps import registry
from tomoguide.steps.import_movies import ImportMoviesParams

pytestmark = pytest.mark.gui


def test_widgets_follow_the_declaration(qtbot) -> None:  # type: ignore[no-untyped-def]
    form = ParamForm(ImportMoviesParams)
    qtbot.addWidget(form)
    meta = ImportMoviesParams.meta()
    assert isinstance(form.editor("tomo5_mdoc"), QCheckBox)
    assert isinstance(form.editor("voltage_kV"), QLineEdit)
    assert form.editor("voltage_kV").text() == "300"  # the tutorial's default
    assert form.fields["voltage_kV"].unit.text() == "kV"
    assert form.fields["amplitude_contrast"].unit.text() == ""  # dimensionless: no unit shown
    assert form.editor("pixel_size_A").placeholderText() == "from mdoc"
    assert form.editor("pixel_size_A").text() == ""
    assert form.editor("gain_path").placeholderText() == "found automatically"
    for name in ("files_dir", "gain_path"):
        assert isinstance(form.fields[name].browse, QPushButton)
    assert form.fields["pattern"].browse is None
    for name, m in meta.items():
        assert form.editor(name).toolTip() == m.help
        assert form.fields[name].label.text() == m.title
    assert form.values() == ImportMoviesParams().model_dump(mode="json")


def test_choices_conditions_and_advanced(qtbot, two_steps) -> None:  # type: ignore[no-untyped-def]
    EchoParams = two_steps[1].Params  # noqa: N806
    form = ParamForm(EchoParams)
    qtbot.addWidget(form)
    form.show()
    combo = form.editor("method")
    assert isinstance(combo, QComboBox)
    assert [combo.itemText(i) for i in range(combo.count())] == ["WBP", "SIRT"]
    # iterations only applies to SIRT, the mask radius only with a mask
    assert not form.fields["iterations"].row.isEnabled()
    assert not form.fields["radius_A"].row.isEnabled()
    committed: list[tuple[str, object]] = []
    form.committed.connect(lambda n, v: committed.append((n, v)))
    combo.setCurrentIndex(1)
    assert committed[-1] == ("method", "SIRT")
    assert form.fields["iterations"].row.isEnabled()
    qtbot.mouseClick(form.editor("use_mask"), Qt.MouseButton.LeftButton)
    assert committed[-1] == ("use_mask", True)
    assert form.fields["radius_A"].row.isEnabled()
    assert form.editor("radius_A").placeholderText() == "half the box"
    # the advanced field is folded until the section is opened
    assert form.advanced_toggle is not None and form.advanced_toggle.text() == "Advanced (1)"
    assert not form.editor("scale").isVisible()
    qtbot.mouseClick(form.advanced_toggle, Qt.MouseButton.LeftButton)
    assert form.editor("scale").isVisible()
    assert field_kind(EchoParams.meta()["iterations"]) == "int"


def test_bounds_refuse_and_warn(qtbot, two_steps) -> None:  # type: ignore[no-untyped-def]
    form = ParamForm(two_steps[1].Params, {"method": "SIRT"})
    qtbot.addWidget(form)
    refused: list[tuple[str, str]] = []
    form.refused.connect(lambda n, r: refused.append((n, r)))
    form.set_value("iterations", 1000)  # hard bound 1-500
    assert refused[-1][0] == "iterations" and "1 to 500" in refused[-1][1]
    level, text = form.message("iterations")
    assert level == "error" and "the value stays 10" in text
    assert form.values()["iterations"] == 10
    form.set_value("iterations", 2.5)
    assert form.message("iterations")[0] == "error" and "whole number" in form.message("iterations")[1]
    form.set_value("iterations", 100)  # suggested 5-50: accepted with a warning
    assert form.values()["iterations"] == 100
    level, text = form.message("iterations")
    assert level == "warning" and "above the usual range" in text and "≤ 50" in text
    form.set_value("iterations", 20)
    assert form.message("iterations") == ("", "")
    # an optional number: empty means None; a required one refuses empty
    form.set_value("use_mask", True)
    form.set_value("radius_A", 80)
    assert form.values()["radius_A"] == 80.0
    form.set_value("radius_A", None)
    assert form.values()["radius_A"] is None
    form.set_value("scale", None)
    assert form.message("scale")[0] == "error" and "a value is needed" in form.message("scale")[1]
    assert form.values()["scale"] == 1.0


def test_focus_shows_the_field_help(qtbot, project_dir, open_wizard) -> None:  # type: ignore[no-untyped-def]
    window = open_wizard(project_dir)
    page = window.current_page()
    window.activateWindow()
    qtbot.waitUntil(lambda: window.isActiveWindow(), timeout=2000)
    page.form.editor("dose_per_tilt_e_A2").setFocus()
    qtbot.waitUntil(lambda: page.focused_field == "dose_per_tilt_e_A2", timeout=2000)
    help_text = page.help_view.toPlainText()
    assert ImportMoviesParams.meta()["dose_per_tilt_e_A2"].help in help_text
    assert "Empty means: from mdoc" in help_text and "Usual range: 0.5 – 10" in help_text
    assert "What it does." in help_text  # the step's own help stays below


def test_every_registered_step_gets_a_form(qtbot) -> None:  # type: ignore[no-untyped-def]
    for step_cls in registry.workflow():
        form = ParamForm(step_cls.Params)
        qtbot.addWidget(form)
        assert set(form.fields) == set(step_cls.Params.model_fields)
        assert form.values() == step_cls.default_params().model_dump(mode="json")
