"""The step framework's helper for long compute calls that report progress through a callback."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tomoguide.steps.base import Cancelled, Progress, RunContext


def _ctx(tmp_path: Path) -> RunContext:
    return RunContext(project_dir=tmp_path, run_dir=tmp_path, upstream={}, cancel_event=threading.Event())


def test_run_in_thread_yields_progress_and_returns_the_result(tmp_path: Path) -> None:
    def work(progress):
        for i in range(3):
            progress((i + 1) / 3, f"iteration {i + 1}")
        return 42

    gen = _ctx(tmp_path).run_in_thread(work)
    seen = []
    while True:
        try:
            seen.append(next(gen))
        except StopIteration as stop:
            result = stop.value
            break
    assert result == 42
    assert [p.message for p in seen if p.fraction is not None] == ["iteration 1", "iteration 2", "iteration 3"]
    assert all(isinstance(p, Progress) for p in seen)


def test_run_in_thread_cancels_at_the_next_progress_call(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    calls = []

    def work(progress):
        for i in range(1000):
            calls.append(i)
            progress(i / 1000, "")
        return "finished"

    ctx.cancel_event.set()
    with pytest.raises(Cancelled):
        list(ctx.run_in_thread(work))
    assert calls == [0]


def test_run_in_thread_passes_errors_on(tmp_path: Path) -> None:
    def work(progress):
        raise ValueError("tomo.mrc: data: broken")

    with pytest.raises(ValueError, match="tomo.mrc"):
        list(_ctx(tmp_path).run_in_thread(work))
