"""Running long work off the GUI thread: a step's run (:class:`StepWorker`) and any function (:class:`FunctionWorker`).

Both are ``QThread`` subclasses whose signals are delivered to the GUI thread (queued connections), so the GUI
never freezes and never touches widgets from the worker. While a :class:`StepWorker` runs it owns the project:
the GUI must not change it (the step page disables its form) until ``finished_run`` arrives.

Signals of :class:`StepWorker` (emitted once each, in this order):

* ``started_run()`` after the project recorded the step as running;
* ``progress(object fraction_or_None, str message)`` for every :class:`~tomoguide.steps.base.Progress`;
* ``log(str)`` for every line the step logs;
* exactly one of ``succeeded(object StepState)``, ``cancelled()``, ``failed(str message, str traceback)``,
  ``refused(list[Issue])``;
* ``finished_run(str outcome)``: "done", "cancelled", "failed" or "refused" (always last).
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QThread, Signal

from tomoguide.project import Project
from tomoguide.runner import RunRefused, StepFailed, StepRun
from tomoguide.steps.base import Cancelled


class StepWorker(QThread):
    """Runs one step of ``project`` in a thread; :meth:`cancel` asks it to stop (within about a second)."""

    started_run = Signal()
    progress = Signal(object, str)
    log = Signal(str)
    succeeded = Signal(object)
    cancelled = Signal()
    failed = Signal(str, str)
    refused = Signal(list)
    finished_run = Signal(str)

    def __init__(self, project: Project, step_id: str, parent: Any = None) -> None:
        super().__init__(parent)
        self.project = project
        self.step_id = step_id
        self.cancel_event = threading.Event()
        self.outcome: str | None = None
        self.started_at: float | None = None

    def cancel(self) -> None:
        self.cancel_event.set()

    def run(self) -> None:  # in the worker thread
        outcome = "failed"
        try:
            from tomoguide.cluster import session_executor  # where the step's units run (settings, issue 18)

            step_run = StepRun(self.project, self.step_id, cancel_event=self.cancel_event, on_log=self.log.emit,
                               executor=session_executor())
            try:
                step_run.preflight()
            except RunRefused as exc:
                outcome = "refused"
                self.refused.emit(list(exc.issues))
                return
            self.started_at = time.monotonic()
            gen = step_run.execute()
            first = True
            while True:
                try:
                    prog = next(gen)
                except StopIteration as stop:
                    outcome = "done"
                    self.succeeded.emit(stop.value)
                    return
                if first:
                    self.started_run.emit()
                    first = False
                self.progress.emit(prog.fraction, prog.message)
        except Cancelled:
            outcome = "cancelled"
            self.cancelled.emit()
        except StepFailed as exc:
            st = self.project.data.steps[self.step_id]
            tb = st.log[-1] if st.log else traceback.format_exc()
            self.failed.emit(str(exc), tb)
        except Exception as exc:  # noqa: BLE001 - anything else is shown to the user, never lost
            self.failed.emit(f"{type(exc).__name__}: {exc}", traceback.format_exc())
        finally:
            self.outcome = outcome
            self.finished_run.emit(outcome)


class FunctionWorker(QThread):
    """Runs ``func(progress)`` in a thread; ``progress(fraction, message)`` is forwarded as a signal.

    ``returned(object)`` or ``errored(str message, str traceback)``, then ``done()``.
    """

    progress = Signal(float, str)
    returned = Signal(object)
    errored = Signal(str, str)
    done = Signal()

    def __init__(self, func: Callable[[Callable[[float, str], None]], Any], parent: Any = None) -> None:
        super().__init__(parent)
        self._func = func

    def run(self) -> None:
        try:
            result = self._func(lambda f, m: self.progress.emit(float(f), str(m)))
        except Exception as exc:  # noqa: BLE001
            self.errored.emit(f"{type(exc).__name__}: {exc}", traceback.format_exc())
        else:
            self.returned.emit(result)
        finally:
            self.done.emit()


def eta_text(fraction: float | None, elapsed_s: float) -> str:
    """Estimated time left from the fraction done and the time elapsed ("about 1 min 20 s left"); "" if unknown."""
    if fraction is None or fraction <= 0.02 or elapsed_s < 1.0 or fraction >= 1.0:
        return ""
    left = elapsed_s * (1.0 - fraction) / fraction
    if left < 60:
        return f"about {max(1, round(left))} s left"
    minutes, seconds = divmod(int(round(left)), 60)
    if minutes < 60:
        return f"about {minutes} min {seconds:02d} s left"
    hours, minutes = divmod(minutes, 60)
    return f"about {hours} h {minutes:02d} min left"
