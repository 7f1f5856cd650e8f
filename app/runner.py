"""Running one step of a project: checks before the run, the run itself, and what is recorded after it.

Used by the command line (``tomoguide run``) and by the wizard's worker thread alike (no Qt here).

* Before a run (:meth:`StepRun.preflight`): the steps it needs must be done and up to date, their records must
  pass validation (a damaged one is named as ``FILE: field: problem`` and its step marked to run again), the
  data must be where they were recorded, its parameters valid, ``check()`` must report no error, and the disk
  and memory it needs (``estimate()``) must be there. A run that cannot succeed is refused with the reasons
  (:class:`RunRefused`), before anything changes.
* During the run the step's generator yields :class:`~tomoguide.steps.base.Progress`; outputs go to a fresh
  ``steps/<id>/run-<stamp>.partial`` folder (created only inside the project, never through a symbolic link).
* Success: every output must lie in that folder and its records pass validation; the run's manifest (files,
  sizes, digests) and content hash are computed and written with the run's record to ``run.json``; the folder
  is renamed to ``run-<stamp>`` (the moment the run counts as finished: a program killed after it is adopted on
  the next open); then the project records it: the previous run is kept for a way back (retention rule), later
  steps whose inputs' content changed become stale (identical results keep them done), project saved, runs
  beyond the retention rule deleted (only ``steps/<id>/run-…`` folders).
* A result that leaves the next step nothing (:attr:`StepResult.nothing_for_next`) is recorded as a failure
  with the step's message.
* Cancel (``cancel_event`` set, the step raises :class:`Cancelled` from ``ctx.check_cancel()``): the partial
  folder is removed and the step's recorded state restored exactly as before the run.
* Error: status ``failed`` with a one-line message and the traceback in the log; earlier outputs are kept.
* Parameter changes (:func:`set_params_checked`) are transactional: values a step's checks refuse are not saved.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import shutil
import threading
import traceback
from collections.abc import Callable, Collection, Generator
from pathlib import Path
from typing import Any

from tomoguide.integrity import RUN_RECORD_FILE, PathRefused, build_manifest, no_links_below
from tomoguide.project import Project, ProjectError, RunFile, RunRecord, StepState, now_iso
from tomoguide.steps import registry
from tomoguide.steps.base import Cancelled, Issue, Progress, RunContext, StepOutputs, StepResult


class RunRefused(Exception):
    """The run cannot start; ``issues`` says why (each an error a trainee can act on)."""

    def __init__(self, step_id: str, issues: list[Issue]) -> None:
        self.step_id = step_id
        self.issues = issues
        super().__init__(f"{step_id}: " + "; ".join(i.message for i in issues))


class ParamsRefused(ValueError):
    """Parameter values that a step's checks refuse; nothing was saved. ``issues`` are the errors."""

    def __init__(self, step_id: str, issues: list[Issue]) -> None:
        self.step_id = step_id
        self.issues = issues
        super().__init__(f"{step_id}: " + "; ".join(i.message for i in issues))


class StepFailed(Exception):
    """The step raised an error (or left the next step nothing); the project records it as failed."""


def upstream_outputs(project: Project, step_id: str) -> dict[str, StepOutputs]:
    """Outputs of every done step that ``step_id`` needs (directly or not, with the current parameters: see
    ``Step.inputs_for``), with absolute paths."""
    out: dict[str, StepOutputs] = {}
    for sid in project.upstream(step_id):
        st = project.data.steps[sid]
        if st.status in ("done", "skipped"):
            out[sid] = StepOutputs(sid, {k: project.dir / v for k, v in st.outputs.items()}, dict(st.metrics),
                                   dict(st.params))
    return out


def _mem_available_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _problem_text(exc: BaseException) -> str:
    """One line for an exception raised by a step's check or estimate (a file problem is printed as it is)."""
    from tomoguide.compute.io.errors import FormatError

    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, (FormatError, PathRefused, ProjectError)):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def deliberate_values(project: Project, step_id: str) -> dict[str, Any]:
    """The values of ``step_id`` that the project's preset chose on purpose (``dataset["deliberate"]``, written by
    :func:`tomoguide.demo.prepare_demo`): field -> ``{"value", "why"}``; they are explained, not warned about."""
    chosen = project.data.dataset.get("deliberate") if isinstance(project.data.dataset, dict) else None
    values = chosen.get(step_id) if isinstance(chosen, dict) else None
    return values if isinstance(values, dict) else {}


class StepRun:
    """One run of one step. Create it, call :meth:`preflight` (raises RunRefused), then iterate :meth:`execute`."""

    def __init__(self, project: Project, step_id: str, *, cancel_event: threading.Event | None = None,
                 on_log: Callable[[str], None] | None = None, executor: Any = None,
                 items: Collection[str] | None = None) -> None:
        self.project = project
        self.executor = executor  # tomoguide.cluster.Executor for the step's units; None: in this process
        self.items = frozenset(items) if items else None  # run only these tilt series, merged (tomoguide.items)
        self.step_cls = registry.get(step_id)
        self.step = self.step_cls()
        self.step_id = step_id
        self.cancel_event = cancel_event or threading.Event()
        self.on_log = on_log
        self.ctx: RunContext | None = None

    def _context(self, run_dir: Path) -> RunContext:
        return RunContext(project_dir=self.project.dir, run_dir=run_dir,
                          upstream=upstream_outputs(self.project, self.step_id),
                          cancel_event=self.cancel_event, on_log=self.on_log, executor=self.executor)

    def input_issues(self, *, save: bool = True) -> list[Issue]:
        """Errors about what the run reads: steps not up to date, damaged records (their step is marked to run
        again, saved when ``save``), data that moved, a step folder that is a link."""
        project = self.project
        issues: list[Issue] = []
        for need in project.inputs_of(self.step_id):
            if need not in project.data.steps:
                continue
            why = project.why_not_up_to_date(need)
            if why is not None:
                title = registry.get(need).title
                st = project.data.steps[need]
                if why.startswith("it is"):
                    why = st.stale_reason if st.status == "stale" and st.stale_reason else ""
                detail = f"it is {st.status}: {why}" if why else f"it is {st.status}"
                issues.append(Issue("error", f"run “{title}” first ({detail})", None))
        if not issues:
            damaged = False
            for sid in project.upstream(self.step_id):
                if sid not in project.data.steps or project.data.steps[sid].status not in ("done", "skipped"):
                    continue
                problem = project.validate_outputs(sid)
                if problem is not None:
                    project.mark_damaged(sid, problem)
                    damaged = True
                    issues.append(Issue("error", f"{problem} — run “{registry.get(sid).title}” again", None))
            if damaged and save and not project.readonly:
                project.save()
        data = project.data_problem(self.step_id)
        if data:
            issues.append(Issue("error", data, None))
        try:
            project.step_dir(self.step_id)
        except (PathRefused, ValueError) as exc:
            issues.append(Issue("error", str(exc), None))
        return issues

    def check_issues(self) -> list[Issue]:
        """Everything that would stop or worry this run, without running it (errors first)."""
        issues = self.input_issues()
        try:
            params = self.project.params(self.step_id)
        except Exception as exc:  # pydantic ValidationError: name the field
            issues.append(Issue("error", f"invalid parameters: {exc}", None))
            return _errors_first(issues)
        issues.extend(params.soft_issues(deliberate_values(self.project, self.step_id)))
        if any(i.level == "error" for i in issues):
            return _errors_first(issues)
        ctx = self._context(self.project.dir / "steps" / self.step_id / "check")
        try:
            issues.extend(self.step.check(params, ctx))
        except Exception as exc:  # noqa: BLE001 - a damaged input must be a message, not a traceback
            issues.append(Issue("error", _problem_text(exc), None))
        if not any(i.level == "error" for i in issues):
            try:
                needs = self.step.estimate(params, ctx)
            except Exception as exc:  # noqa: BLE001
                issues.append(Issue("error", _problem_text(exc), None))
                return _errors_first(issues)
            free = shutil.disk_usage(self.project.dir).free
            if needs.disk_bytes and needs.disk_bytes * 1.1 > free:
                issues.append(Issue("error", f"not enough disk space: the outputs need about "
                                    f"{needs.disk_bytes / 1e9:.2f} GB, {free / 1e9:.2f} GB are free in "
                                    f"{self.project.dir}"))
            mem = _mem_available_bytes()
            if needs.memory_bytes and mem is not None and needs.memory_bytes > mem:
                issues.append(Issue("error", f"not enough memory: the run needs about "
                                    f"{needs.memory_bytes / 1e9:.2f} GB, {mem / 1e9:.2f} GB are available"))
        return _errors_first(issues)

    def param_errors(self) -> list[Issue]:
        """The errors the step's own checks find in its parameters (errors naming a parameter that is not a data
        path: a folder or file being wrong is shown, not refused); empty when the inputs are not there to check
        against yet (they are checked again before the run). :func:`set_params_checked` refuses a change when
        such an error appears that names one of the parameters changed."""
        from tomoguide.project import _path_params

        if any(i.level == "error" for i in self.input_issues(save=False)):
            return []
        params = self.project.params(self.step_id)
        ctx = self._context(self.project.dir / "steps" / self.step_id / "check")
        try:
            issues = self.step.check(params, ctx)
        except Exception:  # noqa: BLE001 - a damaged input is reported by the run's checks, not as a refused value
            return []
        paths = set(_path_params(self.step_id))
        return [i for i in issues if i.level == "error" and i.field is not None and i.field not in paths]

    def preflight(self) -> list[Issue]:
        """Raise :class:`RunRefused` when the run cannot succeed; return the warnings otherwise."""
        issues = self.check_issues()
        if self.items:
            from tomoguide.items import item_problems

            issues = [Issue("error", m, None) for m in item_problems(self.project, self.step_id, self.items)] + issues
        errors = [i for i in issues if i.level == "error"]
        if errors:
            raise RunRefused(self.step_id, errors)
        return issues

    def execute(self) -> Generator[Progress, None, StepState]:
        """Run the step (call :meth:`preflight` first). Yields progress; returns the new recorded state.

        Raises :class:`Cancelled` after restoring the previous state when cancelled, :class:`StepFailed` when
        the step raised or left the next step nothing (after recording the failure)."""
        project = self.project
        st = project.data.steps[self.step_id]
        before = st.model_copy(deep=True)
        params = project.params(self.step_id)
        params_json = dict(st.params)
        identity = project.step_hash(self.step_id)
        inputs = project.input_hashes(self.step_id)
        step_dir = project.step_dir(self.step_id)
        step_dir.mkdir(parents=True, exist_ok=True)
        no_links_below(project.dir, step_dir)
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        final_dir = step_dir / f"run-{stamp}"
        partial = final_dir.with_name(final_dir.name + ".partial")
        partial.mkdir(exist_ok=False)
        ctx = self._context(partial)
        self.ctx = ctx
        from tomoguide.items import merge_items, remove_folders, restrict_upstream

        item_dirs = restrict_upstream(ctx, step_dir, stamp, self.items) if self.items else []
        st.status = "running"
        st.started = now_iso()
        st.error = None
        st.owner_pid = os.getpid()
        project.save()
        yield Progress(0.0, f"starting {self.step_cls.title}")
        if self.executor is not None:  # a local cluster starts in the background, ready for later steps' units
            self.executor.prestart()
        gen = self.step.run(params, ctx)
        try:
            while True:
                ctx.check_cancel()
                try:
                    prog = next(gen)
                except StopIteration as stop:
                    result = stop.value
                    break
                yield prog
            ctx.check_cancel()
            if not isinstance(result, StepResult):
                raise TypeError(f"step {self.step_id} returned {type(result).__name__}, not a StepResult")
            if self.items:
                merge_items(project, self.step_id, result, partial, self.items)
            rec = self._finish(result, partial, final_dir, identity, inputs, params_json, st.started)
        except Cancelled:
            gen.close()
            remove_folders(item_dirs)
            _remove_partial(project, partial)
            project.data.steps[self.step_id] = before
            project.save()
            raise
        except Exception as exc:
            gen.close()
            remove_folders(item_dirs)
            st.status = "failed"
            st.error = getattr(exc, "step_message", None) or _one_line(exc)
            st.finished = now_iso()
            # a dead end is the step's own message, not a bug: no traceback to unfold
            st.log = [*ctx.log_lines, st.error] if isinstance(exc, _DeadEnd) else [*ctx.log_lines,
                                                                                 traceback.format_exc()]
            st.owner_pid = None
            _remove_partial(project, partial)
            project.refresh_staleness()
            project.save()
            raise StepFailed(f"{self.step_cls.title} failed: {st.error}") from exc

        remove_folders(item_dirs)
        os.replace(partial, final_dir)  # the run is finished from here on (adopted if the program stops now)
        _fsync_dir(step_dir)
        dropped = project.record_run(self.step_id, rec)
        st = project.data.steps[self.step_id]
        project.save()
        project.delete_runs(dropped)
        yield Progress(1.0, result.summary or "done")
        return st

    def _finish(self, result: StepResult, partial: Path, final_dir: Path, identity: str,
                inputs: dict[str, str | None], params_json: dict[str, Any], started: str | None) -> RunRecord:
        """Check a successful result and write its ``run.json`` (still in the partial folder)."""
        from tomoguide.steps.records import RecordError, empty_map_problem, output_items, validate_output

        if result.nothing_for_next:
            raise _DeadEnd(result.nothing_for_next)
        rel_outputs: dict[str, str] = {}
        for name, value in result.outputs.items():
            p = Path(value)
            try:
                rel = p.resolve().relative_to(partial.resolve())
            except ValueError:
                raise PathRefused(f"output {name!r} ({p}) is not inside the run folder {partial}") from None
            rel_outputs[name] = rel.as_posix() if str(rel) != "." else "."
            if not p.exists():
                raise FileNotFoundError(f"output {name!r} ({p}) was not written")
            try:
                validate_output(p)
            except RecordError as exc:
                raise RecordError(exc.path, exc.field, f"{exc.message} (written by this run: a bug)") from None
            empty = empty_map_problem(p)
            if empty is not None:
                raise _DeadEnd(f"{self.step_cls.title} produced an empty map ({empty}): check its parameters (see "
                               f"its help: too few particles, a wrong mask or symmetry) and run it again")
            counted = output_items(p)
            if counted is not None and counted[0] == 0 and self.project.downstream(self.step_id):
                raise _DeadEnd(f"{self.step_cls.title} produced no {counted[1]} (output {name!r}): the next step "
                               f"would have nothing to work on; change this step's parameters (see its help) and run "
                               f"it again")
        digests: dict[str, str] = {}
        manifest, content = build_manifest(partial, known=self.project.known_digests(self.project.upstream(self.step_id)),
                                           digests_out=digests)
        run_rel = f"steps/{self.step_id}/{final_dir.name}"
        finished = now_iso()
        metrics = _jsonable(result.metrics)
        log = list(self.ctx.log_lines if self.ctx else []) + ([result.summary] if result.summary else [])
        outputs = {k: run_rel if r == "." else f"{run_rel}/{r}" for k, r in rel_outputs.items()}
        rec = RunRecord(run_dir=run_rel, hash=identity, params=params_json, inputs=inputs, content_hash=content,
                        manifest=manifest, outputs=outputs, metrics=metrics, log=log, started=started,
                        finished=finished)
        run_file = RunFile(step_id=self.step_id, digests=digests, **{**rec.model_dump(), "run_dir": final_dir.name,
                                                                      "outputs": rel_outputs})
        path = partial / RUN_RECORD_FILE
        tmp = partial / (RUN_RECORD_FILE + ".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(run_file.model_dump_json(indent=1))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        return rec


class _DeadEnd(Exception):
    """A result that leaves the next step nothing: the step's own message is the error."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.step_message = message


def run_to_end(run: StepRun, on_progress: Callable[[Progress], None] | None = None) -> StepState:
    """Drive :meth:`StepRun.execute` to its end (for the command line and tests)."""
    gen = run.execute()
    while True:
        try:
            prog = next(gen)
        except StopIteration as stop:
            return stop.value
        if on_progress is not None:
            on_progress(prog)


def set_params_checked(project: Project, changes: dict[str, dict[str, Any]], *, save: bool = True) -> list[str]:
    """Change parameters of one or more steps as one transaction: validated by each step's model and by its own
    checks (when its inputs are there to check against: an error that the change brings and that names a
    parameter being set refuses it). Values refused raise (pydantic ``ValidationError`` or
    :class:`ParamsRefused`) and leave the project exactly as it was, on disk and in memory. Returns the steps
    that were up to date and are not any more."""
    snapshot_steps = {sid: st.model_copy(deep=True) for sid, st in project.data.steps.items()}
    snapshot_paths = {k: v.model_copy(deep=True) for k, v in project.data.data_paths.items()}
    before = {sid for sid in registry.ids() if sid in project.data.steps and project.is_up_to_date(sid)}
    known = {sid: {(i.message, i.field) for i in StepRun(project, sid).param_errors()} for sid in changes}
    try:
        changed = False
        for step_id, values in changes.items():
            changed = project._apply_params(step_id, values) or changed
        project._why_cache.clear()
        for step_id, values in changes.items():
            # refused: a new error about a value being set (box vs cropped box set together); an error about
            # another parameter is what to do next (e.g. "no contour points yet" after choosing surface picking)
            errors = [i for i in StepRun(project, step_id).param_errors()
                      if (i.message, i.field) not in known[step_id] and i.field in values]
            if errors:
                raise ParamsRefused(step_id, errors)
    except BaseException:
        project.data.steps.clear()
        project.data.steps.update(snapshot_steps)
        project.data.data_paths.clear()
        project.data.data_paths.update(snapshot_paths)
        project._why_cache.clear()
        raise
    stale: list[str] = []
    if changed:
        project.refresh_staleness()
        project.restore_kept_runs()
        project.refresh_staleness()
        stale = [sid for sid in registry.ids() if sid in before and not project.is_up_to_date(sid)]
        if save and not project.readonly:
            project.save()
    return stale


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove_partial(project: Project, partial: Path) -> None:
    """Remove this run's partial folder: only a ``run-….partial`` folder inside ``steps/<step>/``."""
    try:
        no_links_below(project.dir, partial)
        if partial.name.endswith(".partial") and partial.parent.parent.name == "steps" and partial.is_dir():
            shutil.rmtree(partial)
    except (PathRefused, OSError):
        pass


def _errors_first(issues: list[Issue]) -> list[Issue]:
    order = {"error": 0, "warning": 1, "info": 2}
    return sorted(issues, key=lambda i: order[i.level])


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    msg = text[0] if text else type(exc).__name__
    return msg if isinstance(exc, (ValueError, OSError, KeyError)) else f"{type(exc).__name__}: {msg}"


def _jsonable(obj: Any) -> Any:
    """Metrics as plain JSON types (numpy scalars and arrays converted)."""
    import numpy as np

    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj
