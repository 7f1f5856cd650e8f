"""Profile one step's work in the main thread (issue 20, item 1).

    python bench/profile_step.py PROJECT STEP [--top 30] [--out FILE.txt] [--keep] [--threads N]

The wizard runs a step's generator in a worker thread, and long compute calls inside a step run in another one
(``RunContext.run_in_thread``); ``cProfile`` follows neither. This script builds the
same :class:`~tomoguide.steps.base.RunContext` the runner builds (:class:`tomoguide.runner.StepRun`: the done
upstream steps' outputs, the step's parameters from ``project.json``), runs the step's checks (preflight), then
drives ``step.run(params, ctx)`` to its end in the main thread under ``cProfile``, with ``ctx.run_in_thread``
replaced by a direct call. Outputs go to a scratch folder
``steps/<STEP>/profile-<stamp>.partial`` inside the project, removed afterwards (``--keep`` keeps it); the
project's record is not changed (the step's status, runs and metrics stay as they were).

Prints the wall time, the load average before/after, and the top entries by cumulative and by own time
(``tottime``); ``--dump`` writes the raw profile (callers: ``pstats``); ``--out`` writes the same text to a file
(e.g. ``bench/results/profiles/refine_fine_before.txt``).
The units a step hands to its run's executor (``ctx.map_units``: movies, tilt series, particle batches) are run here
too, one after another (as the ``inline`` executor runs them, without its helper thread): the profile is of the
work, not of a Dask cluster's scheduling. Numba's parallel kernels count as their calling function's own time.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as _dt
import io
import os
import pstats
import shutil
import sys
import time
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any


def _inline_runner(ctx: Any) -> Callable[..., Generator[Any, None, Any]]:
    """A drop-in for ``RunContext.run_in_thread`` that calls ``fn(progress)`` in this thread (no heartbeat)."""

    def run_inline(fn: Callable[[Callable[[float, str], None]], Any]) -> Generator[Any, None, Any]:
        def progress(fraction: float, message: str) -> None:
            ctx.check_cancel()

        return fn(progress)
        yield  # a generator, as the original (``yield from`` returns fn's result)

    return run_inline


def _inline_units(ctx: Any) -> Callable[..., Generator[Any, None, dict[str, Any]]]:
    """A drop-in for ``RunContext.map_units``: every unit's ``fn(*args, **kwargs)`` called here, in order."""

    def map_inline(fn: Callable[..., Any], units: Any, *, what: str = "") -> Generator[Any, None, dict[str, Any]]:
        results: dict[str, Any] = {}
        for unit in units:
            ctx.check_cancel()
            results[unit.name] = fn(*unit.args, **unit.kwargs)
        return results
        yield  # a generator, as the original

    return map_inline


def profile_step(project_dir: Path, step_id: str, *, top: int = 30, keep: bool = False,
                 dump: Path | None = None, threads: int | None = None) -> str:
    """Run ``step_id`` of the project in ``project_dir`` under cProfile in this thread; return the report text.
    ``dump``: also write the raw profile there (``pstats`` format: callers, ``snakeviz``); ``threads``: the CPU
    threads of the work (:func:`tomoguide.compute.backend.cpu_threads`, as beside a local cluster of that many
    single-threaded workers; None: all cores). Comparing the profiles with 1 and 2 threads shows the serial
    parts (the functions whose own time does not drop)."""
    from tomoguide.compute.backend import cpu_threads
    from tomoguide.project import Project
    from tomoguide.runner import StepRun

    proj = Project.open(project_dir)
    run = StepRun(proj, step_id)
    run.preflight()
    params = proj.params(step_id)
    step_dir = proj.step_dir(step_id)
    step_dir.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    scratch = step_dir / f"profile-{stamp}.partial"
    scratch.mkdir()
    ctx = run._context(scratch)
    ctx.run_in_thread = _inline_runner(ctx)  # the step's worker thread, run here instead (cProfile sees it)
    if hasattr(ctx, "map_units"):
        ctx.map_units = _inline_units(ctx)  # the run's executor's units, one after another in this thread
    load0 = os.getloadavg()
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    try:
        with cpu_threads(threads):
            prof.enable()
            gen = run.step.run(params, ctx)
            while True:
                try:
                    next(gen)
                except StopIteration:
                    break
            prof.disable()
    finally:
        wall = time.perf_counter() - t0
        if not keep:
            shutil.rmtree(scratch, ignore_errors=True)
        proj.close()  # the project's lock: released, not left for the next open to find stale
    load1 = os.getloadavg()
    if dump is not None:
        prof.dump_stats(str(dump))
    out = io.StringIO()
    out.write(f"step {step_id} of {project_dir}: {wall:.2f} s wall (under cProfile)\n")
    out.write(f"load average before {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}, "
              f"after {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}; {os.cpu_count()} CPUs; "
              f"threads {'all' if threads is None else threads}\n\n")
    for key in ("cumulative", "tottime"):
        out.write(f"===== top {top} by {key} =====\n")
        st = pstats.Stats(prof, stream=out)
        st.strip_dirs().sort_stats(key).print_stats(top)
    return out.getvalue()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("project", type=Path)
    ap.add_argument("step")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--out", type=Path, default=None, help="also write the report to this text file")
    ap.add_argument("--keep", action="store_true", help="keep the scratch output folder")
    ap.add_argument("--dump", type=Path, default=None, help="also write the raw profile (pstats) to this file")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads of the work (default: all cores; 1 and 2 side by side show the serial parts)")
    args = ap.parse_args()
    text = profile_step(args.project, args.step, top=args.top, keep=args.keep, dump=args.dump,
                        threads=args.threads)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
