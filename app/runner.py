"""Running one step of a project: checks before the run, the run itself, and what is recorded after it.

Used by the command line (``tomoguide run``) and by the wizard's worker thread alike (no Qt here).

* Before a run (:meth:`StepRun.preflight`): the steps it needs must be done and up to date, its parameters
  valid, ``check()`` must report no error, and the disk and memory it needs (``estimate()``) must be there.
  A run that cannot succeed is refused with the reasons (:class:`RunRefused`), before anything changes.
* During the run the step's generator yields :class:`~tomoguide.steps.base.Progress`; outputs go to a fresh
  ``steps/<id>/run-<stamp>.partial`` folder.
* Success: the folder is renamed to ``run-<stamp>``, outputs/metrics/hash recorded, status ``done``, steps that
  depend on it marked stale, the previous run's folder of this step removed (it is superseded), project saved.
* Cancel (``cancel_event`` set, the step raises :class:`Cancelled` from ``ctx.check_cancel()``): the partial
  folder is removed and the step's recorded state restored exactly as before the run.
* Error: status ``failed`` with a one-line message and the traceback in the log; earlier outputs are kept.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import threading
import traceback
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

from tomoguide.project import Project, StepState, now_iso
from tomoguide.steps import registry
from tomoguide.steps.base import Cancelled, Issue, Progress, RunContext, StepOutputs, StepResult


class RunRefused(Exception):
    """The run cannot start; ``issues`` says why (each an error a trainee can act on)."""

    def __init__(self, step_id: str, issues: list[Issue]) -> None:
        self.step_id = step_id
        self.issues = issues
        super().__init__(f"{step_id}: " + "; ".join(i.message for i in issues))


class StepFailed(Exception):
    """The step raised an error; the project records it as failed."""


def upstream_outputs(project: Project, step_id: str) -> dict[str, StepOutputs]:
    """Outputs of every done step that ``step_id`` needs (directly or not), with absolute paths."""
    out: dict[str, StepOutputs] = {}
    for sid in registry.upstream(step_id):
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


class StepRun:
    """One run of one step. Create it, call :meth:`preflight` (raises RunRefused), then iterate :meth:`execute`."""

    def __init__(self, project: Project, step_id: str, *, cancel_event: threading.Event | None = None,
                 on_log: Callable[[str], None] | None = None) -> None:
        self.project = project
        self.step_cls = registry.get(step_id)
        self.step = self.step_cls()
        self.step_id = step_id
        self.cancel_event = cancel_event or threading.Event()
        self.on_log = on_log
        self.ctx: RunContext | None = None

    def _context(self, run_dir: Path) -> RunContext:
        return RunContext(project_dir=self.project.dir, run_dir=run_dir,
                          upstream=upstream_outputs(self.project, self.step_id),
                          cancel_event=self.cancel_event, on_log=self.on_log)

    def check_issues(self) -> list[Issue]:
        """Everything that would stop or worry this run, without running it (errors first)."""
        issues: list[Issue] = []
        for need in self.step_cls.inputs:
            if not self.project.is_up_to_date(need):
                title = registry.get(need).title
                st = self.project.data.steps[need].status
                issues.append(Issue("error", f"run “{title}” first (it is {st})", None))
        try:
            params = self.project.params(self.step_id)
        except Exception as exc:  # pydantic ValidationError: name the field
            issues.append(Issue("error", f"invalid parameters: {exc}", None))
            return issues
        issues.extend(params.soft_issues())
        if any(i.level == "error" for i in issues):
            return _errors_first(issues)
        ctx = self._context(self.project.dir / "steps" / self.step_id / "check")
        issues.extend(self.step.check(params, ctx))
        if not any(i.level == "error" for i in issues):
            needs = self.step.estimate(params, ctx)
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

    def preflight(self) -> list[Issue]:
        """Raise :class:`RunRefused` when the run cannot succeed; return the warnings otherwise."""
        issues = self.check_issues()
        errors = [i for i in issues if i.level == "error"]
        if errors:
            raise RunRefused(self.step_id, errors)
        return issues

    def execute(self) -> Generator[Progress, None, StepState]:
        """Run the step (call :meth:`preflight` first). Yields progress; returns the new recorded state.

        Raises :class:`Cancelled` after restoring the previous state when cancelled, :class:`StepFailed` when
        the step raised (after recording the failure).
        """
        project = self.project
        st = project.data.steps[self.step_id]
        before = st.model_copy(deep=True)
        params = project.params(self.step_id)
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        final_dir = project.dir / "steps" / self.step_id / f"run-{stamp}"
        partial = final_dir.with_name(final_dir.name + ".partial")
        partial.mkdir(parents=True, exist_ok=False)
        ctx = self._context(partial)
        self.ctx = ctx
        st.status = "running"
        st.started = now_iso()
        st.error = None
        st.owner_pid = os.getpid()
        project.save()
        yield Progress(0.0, f"starting {self.step_cls.title}")
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
        except Cancelled:
            gen.close()
            shutil.rmtree(partial, ignore_errors=True)
            project.data.steps[self.step_id] = before
            project.save()
            raise
        except Exception as exc:
            gen.close()
            st.status = "failed"
            st.error = _one_line(exc)
            st.finished = now_iso()
            st.log = [*ctx.log_lines, traceback.format_exc()]
            st.owner_pid = None
            shutil.rmtree(partial, ignore_errors=True)
            project.save()
            raise StepFailed(f"{self.step_cls.title} failed: {st.error}") from exc

        os.replace(partial, final_dir)
        previous = st.run_dir
        st.outputs = {k: project.relpath(final_dir / Path(v).relative_to(partial)) if _inside(Path(v), partial)
                      else project.relpath(Path(v)) for k, v in result.outputs.items()}
        st.metrics = _jsonable(result.metrics)
        st.run_dir = project.relpath(final_dir)
        st.status = "done"
        st.finished = now_iso()
        st.log = list(ctx.log_lines) + ([result.summary] if result.summary else [])
        st.stale_reason = None
        st.owner_pid = None
        st.hash = project.step_hash(self.step_id)
        project.mark_stale_from(self.step_id, reason=f"{self.step_id} was run again", include_self=False)
        project.save()
        if previous and previous != st.run_dir:
            old = project.dir / previous
            if old.is_dir() and old.resolve().is_relative_to(project.dir / "steps"):
                shutil.rmtree(old, ignore_errors=True)
        yield Progress(1.0, result.summary or "done")
        return st


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


def _inside(p: Path, folder: Path) -> bool:
    try:
        p.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


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
