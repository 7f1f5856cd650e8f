"""The step framework: a workflow step is declared once and read by the GUI, the command line and the project.

A step is a subclass of :class:`Step` with

* ``id`` (``"import_movies"``), ``title``, ``summary`` (one line) and ``help`` (for a novice: what the step
  does, why, what a good result looks like, what to check);
* ``Params``: a :class:`StepParams` (pydantic) model whose fields are declared with :func:`param`, which
  records the unit, the tutorial's default, the help text, hard bounds (a value outside is refused: pydantic
  validation error) and suggested bounds (a value outside is accepted with a warning), conditions
  (``enabled_if``), choices and the widget kind;
* ``inputs``: the ids of the steps whose outputs it needs (they must be done);
* ``check(params, ctx) -> list[Issue]`` for cross-field checks and checks against the data;
* ``estimate(params, ctx) -> Needs``: disk and memory the run will need;
* ``run(params, ctx)``: a generator that yields :class:`Progress` about once a second or more often (so cancel
  is prompt) and *returns* a :class:`StepResult` (outputs: name -> path inside ``ctx.run_dir``; metrics).

What a step writes, it writes through its context's guarded functions (design rule 8): :meth:`RunContext.out_path`
(a path for a writer such as ``write_mrc``), :meth:`RunContext.write_text`, :meth:`RunContext.write_bytes`,
:meth:`RunContext.mkdir` and :meth:`RunContext.remove`. Each resolves the path and refuses
(:class:`~tomoguide.integrity.PathRefused`) anything outside the run's own folder, ``..`` and absolute names,
and symbolic links. A result that leaves the next step nothing to work on (0 particles, every view excluded)
says so in :attr:`StepResult.nothing_for_next`; the runner then records the run as failed with that message.

No Qt here. Nothing here touches the project file: :mod:`tomoguide.runner` does.
"""

from __future__ import annotations

import abc
import queue
import threading
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

IssueLevel = Literal["error", "warning", "info"]
ConditionOp = Literal["=", "!=", "in", "not in", "set", "unset"]
#: "hidden": not shown in the form; a page's preview edits it (e.g. points clicked on slices, a list of rows)
WidgetKind = Literal["auto", "directory", "file", "glob", "text", "choice", "hidden"]


# ---------------------------------------------------------------------------------------------------------------
# parameter declarations
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParamMeta:
    """What the GUI form, the command line and the checks need to know about one parameter."""

    name: str
    title: str
    help: str
    unit: str
    default: Any
    hard: tuple[float | None, float | None]
    suggest: tuple[float | None, float | None]
    enabled_if: tuple[tuple[str, ConditionOp, Any], ...]
    advanced: bool
    choices: tuple[Any, ...]
    widget: WidgetKind
    optional: bool  # None is a legal value ("empty field", e.g. "read it from the mdoc")
    empty_means: str  # what an empty field means, shown as placeholder text ("from mdoc")
    annotation: Any
    #: the tutorial's value (workflow.md) where it differs from the default or the default is "from the data";
    #: meaningful only when ``has_tutorial``
    tutorial: Any = None
    has_tutorial: bool = False
    tutorial_note: str = ""  # why the default differs from the tutorial's value (its data, its sample)

    def shows_tutorial(self, value: Any) -> bool:
        """Whether the form shows "tutorial: X" for ``value``: a tutorial value is recorded and differs from it."""
        return self.has_tutorial and not _same_value(value, self.tutorial)


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) \
            and not isinstance(b, bool):
        return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(b)))
    return bool(a == b)


def format_quantity(value: Any, unit: str) -> str:
    """``value`` with its display unit: "8 Å", "85°", "10 %", "8". A dimensionless value (unit ``"1"``) and
    text (unit ``""``) print no unit; the degree sign and the binning's "×" follow the number without a space
    ("85°", "6×")."""
    text = f"{value:g}" if isinstance(value, float) else str(value)
    if unit in ("", "1"):
        return text
    if unit in ("°", "×"):
        return f"{text}{unit}"
    return f"{text} {unit}"


def param(
    default: Any,
    *,
    title: str,
    help: str,
    unit: str = "",
    hard: tuple[float | None, float | None] = (None, None),
    suggest: tuple[float | None, float | None] = (None, None),
    enabled_if: Sequence[tuple[str, ConditionOp, Any]] = (),
    advanced: bool = False,
    choices: Sequence[Any] = (),
    widget: WidgetKind = "auto",
    empty_means: str = "",
    tutorial: Any = ...,
    tutorial_note: str = "",
) -> Any:
    """Declare a step parameter (use as the default of a :class:`StepParams` field).

    ``unit`` is a display unit ("Å", "px", "°", "µm", "e⁻/Å²", "kV", "mm", "%"). Every numeric parameter has one;
    a dimensionless number says so with ``unit="1"`` (not displayed); ``unit=""`` is for text, paths, choices
    and switches only (the registry test enforces this). ``hard`` bounds become pydantic ``ge``/``le`` constraints
    (errors); ``suggest`` bounds produce warnings from :meth:`StepParams.soft_issues`.

    ``tutorial``: the value the tutorial (``workflow.md``) gives, recorded where it differs from ``default`` or
    where the default is chosen from the data (an empty field); the form shows "tutorial: X" with a reset button
    whenever the field's value differs from it. ``tutorial_note`` says why the default differs (e.g. "for its
    1.35 Å pixels; empty chooses ≈ 8 Å voxels for yours").
    """
    lo, hi = hard
    extra = {
        "unit": unit,
        "suggest": list(suggest),
        "enabled_if": [list(c) for c in enabled_if],
        "advanced": advanced,
        "choices": list(choices),
        "widget": widget,
        "empty_means": empty_means,
        "hard": [lo, hi],
    }
    if tutorial is not ...:
        extra["tutorial"] = tutorial
        extra["tutorial_note"] = tutorial_note
    kwargs: dict[str, Any] = {"title": title, "description": help, "json_schema_extra": extra}
    if lo is not None:
        kwargs["ge"] = lo
    if hi is not None:
        kwargs["le"] = hi
    return Field(default, **kwargs)


class StepParams(BaseModel):
    """Base of every step's parameter model: unknown keys and wrong types are errors (a typo fails loudly)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)

    @classmethod
    def meta(cls) -> dict[str, ParamMeta]:
        """Per-field metadata in declaration order."""
        out: dict[str, ParamMeta] = {}
        for name, f in cls.model_fields.items():
            extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
            ann = f.annotation
            optional = _is_optional(ann)
            out[name] = ParamMeta(
                name=name,
                title=f.title or name,
                help=f.description or "",
                unit=str(extra.get("unit", "")),
                default=f.get_default(call_default_factory=True),
                hard=tuple(extra.get("hard", [None, None])),  # type: ignore[arg-type]
                suggest=tuple(extra.get("suggest", [None, None])),  # type: ignore[arg-type]
                enabled_if=tuple(tuple(c) for c in extra.get("enabled_if", [])),  # type: ignore[misc]
                advanced=bool(extra.get("advanced", False)),
                choices=tuple(extra.get("choices", [])),  # type: ignore[arg-type]
                widget=extra.get("widget", "auto"),  # type: ignore[arg-type]
                optional=optional,
                empty_means=str(extra.get("empty_means", "")),
                annotation=ann,
                tutorial=extra.get("tutorial"),
                has_tutorial="tutorial" in extra,
                tutorial_note=str(extra.get("tutorial_note", "")),
            )
        return out

    def is_enabled(self, name: str) -> bool:
        """Whether field ``name`` applies, given the values of the fields its conditions name."""
        for other, op, value in self.meta()[name].enabled_if:
            current = getattr(self, other)
            if not _condition_holds(current, op, value):
                return False
        return True

    def soft_issues(self, deliberate: dict[str, Any] | None = None) -> list[Issue]:
        """Warnings for values outside the suggested range (only for enabled fields).

        ``deliberate``: field name -> ``{"value": v, "why": text}`` for values a preset chose on purpose (the tiny
        demo's 8 mini-batches for 16 particles): while the field holds that value, it gives an ``info`` issue
        with the reason instead of a warning. Dimensionless values print without a unit."""
        issues: list[Issue] = []
        deliberate = deliberate or {}
        for name, m in self.meta().items():
            value = getattr(self, name)
            if value is None or not self.is_enabled(name) or isinstance(value, bool):
                continue
            if not isinstance(value, (int, float)):
                continue
            lo, hi = m.suggest
            below = lo is not None and value < lo
            above = hi is not None and value > hi
            if not (below or above):
                continue
            chosen = deliberate.get(name)
            if isinstance(chosen, dict) and _same_value(value, chosen.get("value")):
                issues.append(Issue("info", f"{m.title} = {format_quantity(value, m.unit)}: "
                                            f"{chosen.get('why') or 'chosen on purpose for these data'}", name))
                continue
            if below:
                issues.append(
                    Issue("warning", f"{m.title} = {format_quantity(value, m.unit)} is below the usual range "
                          f"(≥ {format_quantity(lo, m.unit)}); it is accepted, but check it.", name)
                )
            if above:
                issues.append(
                    Issue("warning", f"{m.title} = {format_quantity(value, m.unit)} is above the usual range "
                          f"(≤ {format_quantity(hi, m.unit)}); it is accepted, but check it.", name)
                )
        return issues


def _is_optional(annotation: Any) -> bool:
    import types
    import typing

    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return type(None) in typing.get_args(annotation)
    return False


def _condition_holds(current: Any, op: ConditionOp, value: Any) -> bool:
    if op == "=":
        return bool(current == value)
    if op == "!=":
        return bool(current != value)
    if op == "in":
        return current in value
    if op == "not in":
        return current not in value
    if op == "set":
        return current not in (None, "", False)
    if op == "unset":
        return current in (None, "", False)
    raise ValueError(f"unknown condition operator {op!r}")


# ---------------------------------------------------------------------------------------------------------------
# run-time records
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Issue:
    """A problem found before running: ``error`` refuses the run, ``warning`` is shown, ``info`` is a note."""

    level: IssueLevel
    message: str
    field: str | None = None


@dataclass(frozen=True)
class Progress:
    """One progress report: ``fraction`` in [0, 1] (None when unknown) and a short message for the trainee."""

    fraction: float | None
    message: str = ""


@dataclass
class StepResult:
    """What a run returns: output files (name -> path, inside the run folder) and metrics (JSON-able).

    ``nothing_for_next``: set when the result leaves the next step nothing to do (0 particles, every view
    excluded, an empty map): a message for the trainee that names the parameter to change (e.g. "0 particles
    above the threshold: lower Threshold (now 0.4)"). The runner turns it into a failed run with this message,
    shown on this step's page, so the dead end is reported where it can be fixed and not one step later."""

    outputs: dict[str, Path] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    summary: str = ""
    nothing_for_next: str | None = None


@dataclass(frozen=True)
class Needs:
    """Resources a run will need, estimated before it starts."""

    disk_bytes: int = 0
    memory_bytes: int = 0


class Cancelled(Exception):
    """Raised inside a run when the user cancelled; the runner discards the partial run."""


@dataclass
class StepOutputs:
    """Outputs of an earlier, finished step, as a later step sees them (absolute paths)."""

    step_id: str
    outputs: dict[str, Path]
    metrics: dict[str, Any]
    params: dict[str, Any]


@dataclass
class RunContext:
    """Everything a step's ``check``/``estimate``/``run`` may use; built by the runner.

    ``run_dir`` is a fresh folder for this run's outputs (renamed into place only when the run succeeds).
    ``upstream`` maps step ids to the outputs of done steps. ``log`` appends a line to the step's log.
    Writing: :meth:`out_path`, :meth:`write_text`, :meth:`write_bytes`, :meth:`mkdir`, :meth:`remove` (all
    guarded: inside ``run_dir`` only, never through a symbolic link).
    """

    project_dir: Path
    run_dir: Path
    upstream: dict[str, StepOutputs]
    cancel_event: threading.Event = field(default_factory=threading.Event)
    log_lines: list[str] = field(default_factory=list)
    on_log: Callable[[str], None] | None = None
    #: where :meth:`map_units` sends the units (:mod:`tomoguide.cluster`); None: in this process
    executor: Any = None

    # -- the one guarded way to write ----------------------------------------------------------------------------
    def out_path(self, *parts: str | Path, mkdir: bool = False) -> Path:
        """The path of an output file ``run_dir/parts…`` for a writer (``write_mrc(ctx.out_path(name), …)``).

        Refuses (:class:`~tomoguide.integrity.PathRefused`) a name that is absolute or holds ``..``, a result
        outside ``run_dir`` and any symbolic link on the way. ``mkdir``: create the parent folders (guarded)."""
        from tomoguide.integrity import guarded_path

        path = guarded_path(self.run_dir, *parts)
        if mkdir and path.parent != self.run_dir:
            self.mkdir(path.parent)
        return path

    def mkdir(self, *parts: str | Path) -> Path:
        """Create the folder ``run_dir/parts…`` (and its parents inside ``run_dir``); returns it."""
        from tomoguide.integrity import guarded_path

        path = guarded_path(self.run_dir, *parts)
        path.mkdir(parents=True, exist_ok=True)
        guarded_path(self.run_dir, path)  # a link raced in while creating: refuse
        return path

    def write_text(self, name: str | Path, text: str) -> Path:
        """Write a text file (UTF-8) in the run folder, atomically (temporary file, then rename)."""
        return self.write_bytes(name, text.encode("utf-8"))

    def write_bytes(self, name: str | Path, data: bytes) -> Path:
        """Write a file in the run folder, atomically (temporary file, then rename)."""
        import os

        path = self.out_path(name)
        tmp = self.out_path(path.with_name(path.name + ".tmp"))
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return path

    def remove(self, *parts: str | Path) -> None:
        """Delete a file or folder inside the run folder (never the run folder itself, never through a link)."""
        import shutil

        from tomoguide.integrity import PathRefused, guarded_path

        path = guarded_path(self.run_dir, *parts)
        if path == self.run_dir:
            raise PathRefused(f"{path}: the run folder itself cannot be removed by the step")
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()

    def log(self, message: str) -> None:
        self.log_lines.append(message)
        if self.on_log is not None:
            self.on_log(message)

    def check_cancel(self) -> None:
        """Raise :class:`Cancelled` when the user asked to stop."""
        if self.cancel_event.is_set():
            raise Cancelled()

    def run_in_thread(self, fn: Callable[[Callable[[float, str], None]], Any]) -> Generator[Progress, None, Any]:
        """Run ``fn(progress)`` in a worker thread and yield its progress (use ``yield from``; returns ``fn``'s
        result), on the CPU threads the run's executor grants work in this process
        (:meth:`tomoguide.cluster.Executor.in_place_cores`). For long compute calls that report through a
        callback (e.g. SIRT iterations): ``fn`` calls
        ``progress(fraction, message)`` now and then, and that call raises :class:`Cancelled` once the user has
        cancelled; meanwhile a heartbeat is yielded every half second so the GUI stays informed."""
        events: queue.Queue[tuple[str, Any]] = queue.Queue()

        def progress(fraction: float, message: str) -> None:
            if self.cancel_event.is_set():
                raise Cancelled()
            events.put(("progress", (fraction, message)))

        from tomoguide.compute.backend import cpu_threads

        cores = getattr(self.executor, "in_place_cores", lambda: None)()

        def target() -> None:
            try:
                with cpu_threads(cores):  # a local cluster of N workers: N cores here too
                    events.put(("done", fn(progress)))
            except BaseException as exc:  # handed over to the generator's thread
                events.put(("error", exc))

        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        while True:
            try:
                kind, value = events.get(timeout=0.5)
            except queue.Empty:
                yield Progress(None, "working")
                continue
            if kind == "progress":
                yield Progress(*value)
            elif kind == "done":
                thread.join()
                return value
            else:
                thread.join()
                raise value

    def map_units(self, fn: Callable[..., Any], units: Sequence[Any], *,
                  what: str = "") -> Generator[Progress, None, dict[str, Any]]:
        """Run ``fn`` for every :class:`tomoguide.cluster.Unit` (a movie, a series, a particle batch) on this run's
        executor (use ``results = yield from ctx.map_units(fn, units)``): yields progress across all units, returns
        ``{unit name: fn's result}`` in the units' order. ``fn`` is a module-level function taking paths and
        numbers; it writes its files through :func:`tomoguide.cluster.atomic_output` to paths the step made with
        :meth:`out_path`. Cancel stops every unit; a failed unit is retried, then raises
        :class:`tomoguide.cluster.UnitFailed` naming it."""
        from tomoguide.cluster import run_units

        return (yield from run_units(self.executor, fn, units, cancel_event=self.cancel_event, what=what))

    def output(self, step_id: str, name: str) -> Path:
        """Path of output ``name`` of the done step ``step_id`` (KeyError with a clear message otherwise)."""
        if step_id not in self.upstream:
            raise KeyError(f"step {step_id!r} has not been run yet")
        outs = self.upstream[step_id].outputs
        if name not in outs:
            raise KeyError(f"step {step_id!r} has no output {name!r} (it has: {', '.join(outs)})")
        return outs[name]


StepRun = Generator[Progress, None, StepResult]
#: another step's current parameters by id (None when not known or not valid): what :meth:`Step.inputs_for` and
#: :meth:`Step.origin_for` may consult
ParamsOf = Callable[[str], "StepParams | None"]


class Step(abc.ABC):
    """Base class of a workflow step (see the module docstring). Subclasses set the class attributes."""

    id: ClassVar[str]
    title: ClassVar[str]
    summary: ClassVar[str]
    help: ClassVar[str]
    Params: ClassVar[type[StepParams]]
    inputs: ClassVar[tuple[str, ...]] = ()
    optional: ClassVar[bool] = False

    def check(self, params: StepParams, ctx: RunContext) -> list[Issue]:
        """Cross-field checks and checks against the data; no heavy work. Default: none."""
        return []

    def estimate(self, params: StepParams, ctx: RunContext) -> Needs:
        """Disk and memory the run needs. Default: nothing notable."""
        return Needs()

    @abc.abstractmethod
    def run(self, params: StepParams, ctx: RunContext) -> StepRun:
        """Compute the step: yield :class:`Progress`, call ``ctx.check_cancel()`` often, return a StepResult."""

    # convenience -------------------------------------------------------------------------------------------
    @classmethod
    def inputs_for(cls, params: StepParams, params_of: ParamsOf | None = None) -> tuple[str, ...]:
        """The ids of the steps this step needs when run with ``params`` (the entry mechanism). Default:
        :attr:`inputs`. A step whose ``source`` brings its results from elsewhere overrides this to need fewer
        steps (particles read from RELION 5 need no picking). ``params_of(step_id)`` gives another step's current
        parameters (None when unknown or invalid), for a step whose needs follow an earlier step's source. Ids
        returned must be among :attr:`inputs` (the registry enforces this: the workflow order stays valid)."""
        return cls.inputs

    @classmethod
    def applies(cls, params: StepParams, params_of: ParamsOf | None = None) -> bool:
        """Whether this step can run at all with these parameters and the other steps' (``params_of``): False for
        a step that an entry point leaves without its material (re-extraction from the tilt series when the
        particles came from RELION 5 files). A step that does not apply, and every step after it that needs it,
        is "not needed" (:func:`tomoguide.steps.registry.needed`). Default: True."""
        return True

    @classmethod
    def origin_for(cls, params: StepParams, params_of: ParamsOf | None = None) -> str | None:
        """A short label when this step's results come from elsewhere with ``params`` (shown as a badge in the
        step list and by ``tomoguide status``): e.g. ``"from files"``, ``"imported"``; None when it computes
        them (the default)."""
        return None

    @classmethod
    def default_params(cls) -> StepParams:
        return cls.Params()

    @classmethod
    def params_from(cls, values: dict[str, Any]) -> StepParams:
        """Validate stored values (pydantic errors name the field)."""
        return cls.Params.model_validate(values)
