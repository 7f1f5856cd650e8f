"""The parameter form of a step, built from its ``Params`` declaration (:meth:`StepParams.meta`).

Field type → widget: ``bool`` → QCheckBox; ``choices`` → QComboBox; numbers → a line edit that is parsed and
validated when the edit ends (a value outside the hard bounds is *refused*: the saved value is kept and the
reason is shown in red under the field; a value outside the suggested range is *accepted* with an orange warning);
``directory``/``file`` → line edit + "Browse…"; text and glob patterns → line edit. The unit is shown after the
field (not for dimensionless ``"1"``), the help text is the tooltip, ``empty_means`` is the placeholder text,
a field whose value differs from the tutorial's (``param(tutorial=...)``) shows "tutorial: X" with a reset button
(and, under it, why the default differs: ``tutorial_note``),
a value the project's preset chose on purpose shows why (an ℹ note instead of the out-of-range warning),
fields whose ``enabled_if`` conditions do not hold are greyed out, and ``advanced`` fields sit in a folded
section. Fields declared with ``widget="hidden"`` are never shown (their widgets stay hidden, out of the layout;
the page's preview edits them, e.g. points clicked on slices); their values are kept in :meth:`ParamForm.values`.

The form does not save anything: it emits ``committed(name, value)`` with a validated value and
``refused(name, reason)``; the step page saves through ``Project.set_params``.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import ValidationError
from PySide6.QtCore import QEvent, QObject, Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from tomoguide.steps.base import Issue, ParamMeta, StepParams, format_quantity

ERROR_COLOUR = "#c62828"
WARNING_COLOUR = "#b26a00"
INFO_COLOUR = "#455a64"
TUTORIAL_COLOUR = "#1565c0"


def tutorial_text(meta: ParamMeta) -> str:
    """"tutorial: 6×" for a field with a recorded tutorial value ("tutorial: empty" for an empty one)."""
    value = meta.tutorial
    shown = "empty" if value in (None, "") else format_quantity(value, meta.unit)
    return f"tutorial: {shown}"


def base_type(annotation: Any) -> Any:
    """The annotation without ``| None`` (``float | None`` → ``float``)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def field_kind(meta: ParamMeta) -> str:
    """Which widget a field gets: "bool", "choice", "int", "float", "directory", "file" or "text"."""
    typ = base_type(meta.annotation)
    if meta.choices or meta.widget == "choice":
        return "choice"
    if typ is bool:
        return "bool"
    if meta.widget in ("directory", "file"):
        return meta.widget
    if typ is int:
        return "int"
    if typ is float:
        return "float"
    return "text"


def format_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def hard_bound_reason(meta: ParamMeta) -> str:
    """"allowed: 20–1000 kV" from the hard bounds (for a refused value)."""
    lo, hi = meta.hard
    unit = "" if meta.unit in ("", "1") else f" {meta.unit}"
    if lo is not None and hi is not None:
        return f"allowed: {lo:g} to {hi:g}{unit}"
    if lo is not None:
        return f"allowed: at least {lo:g}{unit}"
    if hi is not None:
        return f"allowed: at most {hi:g}{unit}"
    return ""


class _FocusWatcher(QObject):
    """Emits the field name when one of its widgets gets the keyboard focus."""

    def __init__(self, form: ParamForm, name: str) -> None:
        super().__init__(form)
        self._form = form
        self._name = name

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt API
        if event.type() == QEvent.Type.FocusIn:
            self._form.field_focused.emit(self._name)
        return False


class _Field:
    """The widgets of one field: the label, the editor (plus unit and browse button) and the message line."""

    def __init__(self, form: ParamForm, meta: ParamMeta) -> None:
        self.meta = meta
        self.kind = field_kind(meta)
        self.hidden = meta.widget == "hidden"
        self.label = QLabel(meta.title)
        self.label.setToolTip(meta.help)
        self.row = QWidget()
        lay = QHBoxLayout(self.row)
        lay.setContentsMargins(0, 0, 0, 0)
        self.browse: QPushButton | None = None
        self.editor: QWidget
        if self.kind == "bool":
            self.editor = QCheckBox()
            self.editor.toggled.connect(lambda _=False: form._on_edit(meta.name))
        elif self.kind == "choice":
            combo = QComboBox()
            for c in meta.choices:
                combo.addItem(format_value(c), c)
            combo.currentIndexChanged.connect(lambda _=0: form._on_edit(meta.name))
            self.editor = combo
        else:
            edit = QLineEdit()
            edit.setPlaceholderText(meta.empty_means)
            edit.editingFinished.connect(lambda: form._on_edit(meta.name))
            if self.kind in ("int", "float"):
                edit.setAlignment(Qt.AlignmentFlag.AlignRight)
                edit.setMaximumWidth(140)
            self.editor = edit
        self.editor.setObjectName(f"field_{meta.name}")
        self.editor.setToolTip(meta.help)
        lay.addWidget(self.editor, 1 if self.kind not in ("int", "float", "bool") else 0)
        self.unit = QLabel("" if meta.unit in ("", "1") else meta.unit)
        if self.unit.text():
            lay.addWidget(self.unit)
        if self.kind in ("directory", "file"):
            self.browse = QPushButton("Browse…")
            self.browse.setToolTip(f"Choose the {meta.title.lower()}")
            self.browse.clicked.connect(lambda: form._browse(meta.name))
            lay.addWidget(self.browse)
        # the tutorial's value, shown while the field holds another one, with a button that puts it back
        self.tutorial_label: QLabel | None = None
        self.tutorial_reset: QToolButton | None = None
        if meta.has_tutorial:
            self.tutorial_label = QLabel(tutorial_text(meta))
            self.tutorial_label.setObjectName(f"tutorial_{meta.name}")
            self.tutorial_label.setStyleSheet(f"color: {TUTORIAL_COLOUR};")
            tip = f"The tutorial's value: {tutorial_text(meta).split(': ', 1)[1]}."
            if meta.tutorial_note:
                tip += f" {meta.tutorial_note}"
            self.tutorial_label.setToolTip(tip)
            self.tutorial_reset = QToolButton()
            self.tutorial_reset.setObjectName(f"reset_{meta.name}")
            self.tutorial_reset.setText("↺ Reset")
            self.tutorial_reset.setAutoRaise(True)
            self.tutorial_reset.setToolTip(f"Set {meta.title} to the tutorial's value "
                                           f"({tutorial_text(meta).split(': ', 1)[1]})")
            self.tutorial_reset.clicked.connect(lambda: form.reset_to_tutorial(meta.name))
            lay.addWidget(self.tutorial_label)
            lay.addWidget(self.tutorial_reset)
        if self.kind in ("int", "float", "bool"):
            lay.addStretch(1)
        self.message = QLabel("")
        self.message.setWordWrap(True)
        self.message.setObjectName(f"message_{meta.name}")
        self.message.setVisible(False)
        self.level = ""
        self.refusal = ""  # why the last value typed was refused ("" when the field shows an accepted value)
        watcher = _FocusWatcher(form, meta.name)
        self.editor.installEventFilter(watcher)
        self.label.installEventFilter(watcher)

    def show_value(self, value: Any) -> None:
        if self.hidden:
            return
        self.editor.blockSignals(True)
        try:
            if isinstance(self.editor, QCheckBox):
                self.editor.setChecked(bool(value))
            elif isinstance(self.editor, QComboBox):
                idx = self.editor.findData(value)
                self.editor.setCurrentIndex(max(idx, 0))
            elif isinstance(self.editor, QLineEdit):
                self.editor.setText(format_value(value))
                self.editor.setCursorPosition(0)
        finally:
            self.editor.blockSignals(False)

    def read(self) -> tuple[bool, Any]:
        """(True, value) or (False, reason) from what the widget shows."""
        meta = self.meta
        if isinstance(self.editor, QCheckBox):
            return True, self.editor.isChecked()
        if isinstance(self.editor, QComboBox):
            return True, self.editor.currentData()
        assert isinstance(self.editor, QLineEdit)
        text = self.editor.text().strip()
        if text == "":
            if meta.optional:
                return True, None
            if self.kind in ("int", "float"):
                return False, "a value is needed"
            return True, ""
        if self.kind == "int":
            try:
                return True, int(text)
            except ValueError:
                return False, f"“{text}” is not a whole number"
        if self.kind == "float":
            try:
                return True, float(text.replace(",", ".") if text.count(",") == 1 and "." not in text else text)
            except ValueError:
                return False, f"“{text}” is not a number"
        return True, text

    def set_message(self, level: str, text: str) -> None:
        self.level = level if text else ""
        colour = {"error": ERROR_COLOUR, "info": INFO_COLOUR}.get(level, WARNING_COLOUR)
        symbol = {"error": "✖", "info": "ℹ"}.get(level, "⚠")
        self.message.setText(f"{symbol} {text}" if text else "")
        self.message.setStyleSheet(f"color: {colour};")
        self.message.setVisible(bool(text) and not self.hidden)
        if isinstance(self.editor, QLineEdit) and not self.hidden:
            framed = bool(text) and level != "info"
            self.editor.setStyleSheet(f"QLineEdit {{ border: 1px solid {colour}; }}" if framed else "")

    def show_tutorial(self, value: Any) -> None:
        """Show "tutorial: X" and its reset button while the value differs from the tutorial's."""
        if self.tutorial_label is None or self.tutorial_reset is None:
            return
        differs = self.meta.shows_tutorial(value) and not self.hidden
        self.tutorial_label.setVisible(differs)
        self.tutorial_reset.setVisible(differs)


class ParamForm(QWidget):
    """A form for the ``params_cls`` fields, showing ``values`` (a ``model_dump(mode="json")`` dict)."""

    committed = Signal(str, object)
    refused = Signal(str, str)
    field_focused = Signal(str)

    def __init__(self, params_cls: type[StepParams], values: dict[str, Any] | None = None,
                 parent: QWidget | None = None, *, deliberate: dict[str, Any] | None = None) -> None:
        super().__init__(parent)
        self.params_cls = params_cls
        # values the project's preset chose on purpose (field -> {"value", "why"}): explained, not warned about
        self.deliberate: dict[str, Any] = dict(deliberate or {})
        self.meta = params_cls.meta()
        self._values: dict[str, Any] = params_cls.model_validate(values or {}).model_dump(mode="json")
        self.fields: dict[str, _Field] = {}
        self._check_issues: dict[str, Issue] = {}
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        basic = QWidget()
        self._basic_grid = QGridLayout(basic)
        self._basic_grid.setContentsMargins(0, 0, 0, 0)
        self._basic_grid.setColumnStretch(1, 1)
        outer.addWidget(basic)
        advanced = [m for m in self.meta.values() if m.advanced]
        self.advanced_toggle: QToolButton | None = None
        self.advanced_box: QWidget | None = None
        adv_grid: QGridLayout | None = None
        if advanced:
            self.advanced_toggle = QToolButton()
            self.advanced_toggle.setText(f"Advanced ({len(advanced)})")
            self.advanced_toggle.setCheckable(True)
            self.advanced_toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
            self.advanced_toggle.setArrowType(Qt.ArrowType.RightArrow)
            self.advanced_toggle.setAutoRaise(True)
            self.advanced_toggle.toggled.connect(self.set_advanced_visible)
            outer.addWidget(self.advanced_toggle)
            self.advanced_box = QWidget()
            adv_grid = QGridLayout(self.advanced_box)
            adv_grid.setContentsMargins(16, 0, 0, 0)
            adv_grid.setColumnStretch(1, 1)
            self.advanced_box.setVisible(False)
            outer.addWidget(self.advanced_box)
        rows = {id(self._basic_grid): 0, id(adv_grid): 0}
        for name, meta in self.meta.items():
            f = _Field(self, meta)
            self.fields[name] = f
            if f.hidden:  # edited by the page's preview (e.g. clicked points): kept in values(), never shown
                for w in (f.label, f.row, f.message):
                    w.setParent(self)
                    w.hide()
                continue
            grid = adv_grid if (meta.advanced and adv_grid is not None) else self._basic_grid
            r = rows[id(grid)]
            grid.addWidget(f.label, r, 0, Qt.AlignmentFlag.AlignVCenter)
            grid.addWidget(f.row, r, 1)
            grid.addWidget(f.message, r + 1, 1)
            rows[id(grid)] = r + 2
            f.show_value(self._values[name])
        outer.addStretch(1)
        self._update_states()

    # -- public ----------------------------------------------------------------------------------------------
    def values(self) -> dict[str, Any]:
        """The accepted values (JSON form)."""
        return dict(self._values)

    def set_values(self, values: dict[str, Any]) -> None:
        """Show new values (e.g. after reloading the project); clears refusal messages."""
        self._values = self.params_cls.model_validate(values).model_dump(mode="json")
        for name, f in self.fields.items():
            f.show_value(self._values[name])
            f.refusal = ""
        self._update_states()

    def set_check_issues(self, issues: list[Issue]) -> None:
        """Show the step's check issues that name a field under that field (the first per field, errors first)."""
        self._check_issues = {}
        for issue in sorted(issues, key=lambda i: i.level != "error"):
            if issue.field in self.fields and issue.field not in self._check_issues:
                self._check_issues[issue.field] = issue
        self._update_states()

    def editor(self, name: str) -> QWidget:
        return self.fields[name].editor

    def message(self, name: str) -> tuple[str, str]:
        """(level, text) of the message shown under a field: level "error", "warning" or ""."""
        f = self.fields[name]
        return f.level, f.message.text()

    def set_advanced_visible(self, visible: bool) -> None:
        if self.advanced_box is None or self.advanced_toggle is None:
            return
        self.advanced_box.setVisible(visible)
        self.advanced_toggle.setArrowType(Qt.ArrowType.DownArrow if visible else Qt.ArrowType.RightArrow)
        if self.advanced_toggle.isChecked() != visible:
            self.advanced_toggle.setChecked(visible)

    def tutorial_shown(self, name: str) -> str:
        """The "tutorial: X" text shown beside a field ("" when hidden: no tutorial value, or the same value)."""
        f = self.fields[name]
        if f.tutorial_label is None or f.tutorial_label.isHidden():
            return ""
        return f.tutorial_label.text()

    def reset_to_tutorial(self, name: str) -> None:
        """Put the tutorial's value in field ``name`` and commit it (the reset button beside "tutorial: X")."""
        meta = self.meta[name]
        if meta.has_tutorial:
            self.set_value(name, meta.tutorial)

    def set_value(self, name: str, value: Any) -> None:
        """Put ``value`` in the field's widget and commit it, as a user typing it would."""
        f = self.fields[name]
        if isinstance(f.editor, QLineEdit):
            f.editor.setText(format_value(value))
            self._on_edit(name)
        else:
            f.show_value(value)
            self._on_edit(name)

    # -- internals -------------------------------------------------------------------------------------------
    def _on_edit(self, name: str) -> None:
        f = self.fields[name]
        ok, value = f.read()
        if not ok:
            f.refusal = f"{value}; the value stays {format_value(self._values[name]) or 'empty'}"
            f.set_message("error", f.refusal)
            self.refused.emit(name, str(value))
            return
        if value == self._values.get(name) and not f.refusal:
            return
        candidate = {**self._values, name: value}
        try:
            params = self.params_cls.model_validate(candidate)
        except ValidationError as exc:
            reason = self._reason(name, exc)
            kept = format_value(self._values[name]) or "empty"
            f.refusal = f"refused: {reason}; the value stays {kept}"
            f.set_message("error", f.refusal)
            self.refused.emit(name, reason)
            return
        self._values = params.model_dump(mode="json")
        f.refusal = ""
        self._check_issues.pop(name, None)  # the step page re-checks after saving
        self._update_states(params)
        self.committed.emit(name, self._values[name])

    def _reason(self, name: str, exc: ValidationError) -> str:
        meta = self.meta[name]
        for err in exc.errors():
            if err["loc"] and err["loc"][0] == name:
                if err["type"] in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
                    value = format_value(err.get("input"))
                    return f"{value} is outside the hard limits ({hard_bound_reason(meta)})"
                return str(err["msg"])
        return str(exc.errors()[0]["msg"])

    def _update_states(self, params: StepParams | None = None) -> None:
        params = params or self.params_cls.model_validate(self._values)
        soft: dict[str, Issue] = {}
        for issue in params.soft_issues(self.deliberate):
            if issue.field:
                soft[issue.field] = issue
        for name, f in self.fields.items():
            enabled = params.is_enabled(name)
            for w in (f.label, f.row):
                w.setEnabled(enabled)
            f.show_tutorial(self._values.get(name))
            issue = self._check_issues.get(name)
            if f.refusal:
                f.set_message("error", f.refusal)
            elif issue is not None and issue.level in ("error", "warning"):
                f.set_message(issue.level, issue.message)
            elif name in soft:
                f.set_message(soft[name].level, soft[name].message)
            elif f.meta.tutorial_note and f.meta.shows_tutorial(self._values.get(name)) and not f.hidden:
                # why this value differs from the tutorial's (its data, its sample), under the field
                f.set_message("info", f.meta.tutorial_note)
            else:
                f.set_message("warning", "")

    def _browse(self, name: str) -> None:
        f = self.fields[name]
        assert isinstance(f.editor, QLineEdit)
        start = f.editor.text() or ""
        if f.kind == "directory":
            path = QFileDialog.getExistingDirectory(self, f.meta.title, start)
        else:
            path, _ = QFileDialog.getOpenFileName(self, f.meta.title, start)
        if path:
            f.editor.setText(path)
            self._on_edit(name)
