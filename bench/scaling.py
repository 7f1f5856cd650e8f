"""Scale-out of the steps over Dask workers (issue 18): speed-up and efficiency with 1 and 2 local single-threaded
workers, against today's in-process run, and the executor's per-task overhead.

    python bench/scaling.py [--preset small|full|tiny] [--out-dir /tmp/scaling] [--until reconstruct]
                            [--results bench/results]

1. Simulates the preset and creates its demo project (:func:`tomoguide.demo.prepare_demo`; reused when present),
   and runs the steps up to ``--until`` once in this process (the prerequisite; its step times are "today's
   in-process run" as the CLI did it before the executor: ``inline``, all cores to this process's threads).
2. For each configuration — ``inline`` (this process), ``local`` with 1 and with 2 single-threaded worker processes
   (each pinned to its own core) — copies the project and reruns the same steps (from the first step that
   submits units) in one process, timing every step; the cluster's start-up is timed apart (it is paid once per
   command). Every MRC output is compared with the inline run's: bit for bit, else the lowest correlation and the
   largest difference (kernels that use all threads in this process and one in a worker may differ in the last
   bit, e.g. the interpolated aligned stack: 2.4e-7).
3. Per-task overhead: 400 empty tasks through the 2-worker cluster (ms per task), and through inline.
4. Memory: each worker's peak resident memory (VmHWM) at the end, against its memory limit.

Writes ``RESULTS/scaling_<preset>.json`` (and ``scaling.json`` for the small preset) with the machine's load
average before and after each configuration (the machine is shared: read ratios measured in this one run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from datetime import datetime
from pathlib import Path

import mrcfile
import numpy as np

from tomoguide.cluster import ClusterSettings, DaskExecutor, InlineExecutor, Unit
from tomoguide.demo import prepare_demo
from tomoguide.project import Project
from tomoguide.runner import StepRun, run_to_end
from tomoguide.steps import registry

FIRST = "motion_ctf"


def empty(i: int) -> int:
    return i


def _warm() -> None:
    """Import the compute modules in a worker (start-up cost, timed with the cluster's start)."""
    import tomoguide.compute.ctfcorrect  # noqa: F401
    import tomoguide.compute.ctffit  # noqa: F401
    import tomoguide.compute.motion  # noqa: F401
    import tomoguide.compute.reconstruct  # noqa: F401
    import tomoguide.compute.rescale  # noqa: F401


def _peak_rss() -> int:
    """This process's peak resident memory (VmHWM; getrusage's ru_maxrss survives exec, so a spawned worker would
    report its parent's)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return -1


def run_steps(project_dir: Path, steps: list[str], executor: object) -> dict[str, float]:
    proj = Project.open(project_dir)
    times: dict[str, float] = {}
    try:
        for step in steps:
            t0 = time.perf_counter()
            st = run_to_end(StepRun(proj, step, executor=executor))
            times[step] = round(time.perf_counter() - t0, 3)
            if st.status != "done":
                raise RuntimeError(f"{step}: {st.error}")
            print(f"    {step}: {times[step]:.1f} s", file=sys.stderr, flush=True)
    finally:
        proj.close()
    return times


def mrc_outputs(project_dir: Path, steps: list[str]) -> dict[str, np.ndarray]:
    out = {}
    for step in steps:
        run = sorted(p for p in (project_dir / "steps" / step).glob("run-*") if not p.name.endswith(".partial"))[-1]
        for f in sorted(run.glob("*.mrc")):
            out[f"{step}/{f.name}"] = mrcfile.read(f)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="small", choices=["tiny", "small", "full"])
    ap.add_argument("--out-dir", default="/tmp/scaling")
    ap.add_argument("--until", default="reconstruct")
    ap.add_argument("--results", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    ids = registry.ids()
    steps = ids[ids.index(FIRST): ids.index(args.until) + 1]
    out = Path(args.out_dir) / args.preset
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    project = prepare_demo(out, preset=args.preset)
    t_sim = time.perf_counter() - t0
    print(f"data and project in {out} ({t_sim:.0f} s)", file=sys.stderr)
    proj = Project.open(project)
    try:
        todo = [s for s in ids[: ids.index(args.until) + 1] if not proj.is_up_to_date(s)]
    finally:
        proj.close()
    if todo:
        print(f"prerequisite run (inline): {', '.join(todo)}", file=sys.stderr)
        run_steps(project, todo, InlineExecutor())

    configs: dict[str, dict] = {}
    ref_outputs = None
    for name, workers in (("inline", 0), ("local_1", 1), ("local_2", 2)):
        dst = Path(args.out_dir) / f"{args.preset}_{name}"
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(out, dst, symlinks=True)
        load_before = os.getloadavg()
        print(f"{name}:", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        ex = InlineExecutor() if workers == 0 else DaskExecutor("local", ClusterSettings(workers=workers))
        if workers:
            ex.client.run(_warm)
        t_start = time.perf_counter() - t0
        try:
            times = run_steps(dst / "project", steps, ex)
            worker_mem = {}
            if workers:
                limits = {a: w.get("memory_limit") for a, w in ex.client.scheduler_info(n_workers=-1)["workers"].items()}
                peaks = ex.client.run(_peak_rss)
                worker_mem = {a: {"peak_rss_bytes": int(p), "limit_bytes": limits.get(a)} for a, p in peaks.items()}
        finally:
            t1 = time.perf_counter()
            ex.close()
            t_close = time.perf_counter() - t1
        outputs = mrc_outputs(dst / "project", steps)
        if ref_outputs is None:
            ref_outputs, same, corr, diff = outputs, True, 1.0, 0.0
        else:
            same = sorted(outputs) == sorted(ref_outputs) and all(
                np.array_equal(outputs[k], ref_outputs[k]) for k in outputs)
            corr = min(float(np.corrcoef(outputs[k].ravel(), ref_outputs[k].ravel())[0, 1]) for k in outputs)
            diff = max(float(np.abs(outputs[k].astype(np.float64) - ref_outputs[k]).max()) for k in outputs)
        configs[name] = {"workers": workers, "cluster_start_s": round(t_start, 2), "cluster_close_s": round(t_close, 2),
                         "steps_s": times, "total_steps_s": round(sum(times.values()), 2),
                         "identical_to_inline": bool(same), "min_correlation_vs_inline": corr,
                         "max_abs_difference_vs_inline": diff, "worker_memory": worker_mem,
                         "load_before": [round(x, 2) for x in load_before],
                         "load_after": [round(x, 2) for x in os.getloadavg()]}
        shutil.rmtree(dst)

    one, two = configs["local_1"]["total_steps_s"], configs["local_2"]["total_steps_s"]
    per_step = {s: {"t1_s": configs["local_1"]["steps_s"][s], "t2_s": configs["local_2"]["steps_s"][s],
                    "ratio_2_over_1": round(configs["local_2"]["steps_s"][s] / max(configs["local_1"]["steps_s"][s],
                                                                                  1e-9), 3)}
                for s in steps}
    # per-task overhead: empty tasks
    with DaskExecutor("local", ClusterSettings(workers=2)) as ex:
        units = [Unit(f"e{i}", (i,)) for i in range(400)]
        list(ex.map_units(empty, units[:20]))  # warm
        t0 = time.perf_counter()
        list(ex.map_units(empty, units))
        dask_ms = (time.perf_counter() - t0) / len(units) * 1e3
    t0 = time.perf_counter()
    list(InlineExecutor().map_units(empty, units))
    inline_ms = (time.perf_counter() - t0) / len(units) * 1e3
    inline_total = configs["inline"]["total_steps_s"]
    local_default = configs["local_2"]["total_steps_s"] + configs["local_2"]["cluster_start_s"]
    result = {
        "preset": args.preset, "steps": steps, "date": datetime.now().isoformat(timespec="seconds"),
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(), "node": platform.node()},
        "configs": configs, "per_step": per_step,
        "speedup_2_workers": round(one / two, 3), "efficiency_2_workers": round(one / two / 2, 3),
        "ratio_2_over_1": round(two / one, 3),
        "local_default_vs_inline": {"inline_steps_s": inline_total, "local_2_steps_plus_start_s": round(local_default, 2),
                                    "ratio": round(local_default / inline_total, 3)},
        "overhead_ms_per_empty_task": {"local_2_workers": round(dask_ms, 2), "inline": round(inline_ms, 3)},
        "note": "times in s on this shared 2-core machine, all configurations in one run; load averages recorded "
                "before/after each; 'inline' = today's in-process run (threads of this process), 'local_N' = N "
                "single-threaded worker processes pinned to their own core",
    }
    res_dir = Path(args.results)
    res_dir.mkdir(parents=True, exist_ok=True)
    names = [f"scaling_{args.preset}.json"] + (["scaling.json"] if args.preset == "small" else [])
    for n in names:
        (res_dir / n).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("speedup_2_workers", "efficiency_2_workers", "ratio_2_over_1",
                                             "local_default_vs_inline", "overhead_ms_per_empty_task")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
