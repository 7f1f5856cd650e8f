"""A preset end to end, movies to the average, on each executor — ``inline``, ``local`` (the default), ``slurm`` — and
every result compared with the inline run's (issue 18's done-when).

    python bench/full_clusters.py [--preset full] [--out-dir /tmp/full] [--clusters inline,local,slurm]
                                  [--slurm-memory 3800MB] [--results bench/results]

1. Simulates the preset once into ``OUT/base`` (:func:`tomoguide.demo.prepare_demo`; reused when present) and
   creates its demo project (no step run).
2. For each cluster: ``OUT/<cluster>`` gets a copy of that fresh project (the movies and the truth are linked, not
   copied) and every step runs in wizard order on that executor, as ``tomoguide demo`` / ``tomoguide run`` would
   (``local``: the command line's default, one single-threaded worker process per core; ``slurm``: pilot jobs
   through ``sbatch`` on the cluster that ``.ci/slurm_one_node.sh start`` runs, ``cores=1`` per job and
   ``max_jobs`` = the cores of the node). Times every step; records each Dask worker's peak resident memory
   (VmHWM) against its limit, the SLURM job ids and the load average. A run already complete in ``OUT/<cluster>``
   is reused (its times are read from the project).
3. Compares each run with the inline one: every MRC output of every step (bit for bit, else the lowest
   correlation and the largest difference), the numbers in every alignment and picking file (``.xf``, ``.tlt``,
   ``.star``, ``.json`` of ``align``, ``assign_alignment`` and ``pick``: count and largest difference), and the
   final maps (correlation of ``refine_fine``'s average with inline's); and each run's maps against the truth
   (:func:`tomoguide.truth.map_errors`) and its picks (:func:`tomoguide.truth.pick_errors`).

Writes ``RESULTS/full_clusters_<preset>.json`` after every run (so a partial result survives) and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import mrcfile
import numpy as np

from tomoguide import truth
from tomoguide.cluster import ClusterSettings, DaskExecutor, Executor, InlineExecutor, LazyExecutor, SlurmSettings
from tomoguide.demo import prepare_demo
from tomoguide.project import Project
from tomoguide.runner import StepRun, run_to_end
from tomoguide.steps import registry

GEOMETRY_STEPS = ("align", "assign_alignment", "pick")
MAPS = ("initial_model", "refine", "reconstruct_particle", "refine_fine")
NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")


def _peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return -1


def _seconds(step: dict) -> float | None:
    if not step.get("started") or not step.get("finished"):
        return None
    return (datetime.fromisoformat(step["finished"]) - datetime.fromisoformat(step["started"])).total_seconds()


def latest_run(project: Path, step: str) -> Path:
    return sorted(p for p in (project / "steps" / step).glob("run-*") if not p.name.endswith(".partial"))[-1]


def mrc_files(project: Path) -> dict[str, Path]:
    out = {}
    for step in registry.ids():
        if not (project / "steps" / step).is_dir():
            continue
        run = latest_run(project, step)
        for f in sorted(run.rglob("*.mrc")):
            out[f"{step}/{f.relative_to(run)}"] = f
    return out


def text_numbers(project: Path) -> dict[str, np.ndarray]:
    """The numbers of the geometry files (alignment, picks), in file order; time stamps and paths excluded."""
    out = {}
    for step in GEOMETRY_STEPS:
        run = latest_run(project, step)
        for f in sorted(run.rglob("*")):
            if f.suffix not in (".xf", ".tlt", ".star", ".json", ".xtilt") or not f.is_file() or f.name == "run.json":
                continue
            lines = [ln for ln in f.read_text(errors="replace").splitlines()
                     if not re.search(r"\d{4}-\d\d-\d\dT|/tmp/|seconds|_s\"|time", ln)]
            out[f"{step}/{f.relative_to(run)}"] = np.array(
                [float(x) for ln in lines for x in NUMBER.findall(re.sub(r"[A-Za-z_]+\d+", "", ln))])
    return out


def picks_as_sets(ref: Path, got: Path) -> dict:
    """The two runs' picks per tomogram: the same set of positions (rows sorted), and in the same order?"""
    from tomoguide.compute.io.star import read_particles_star

    def table(project: Path) -> object:
        proj = Project.open(project)
        try:
            return read_particles_star(proj.output_path("pick", "particles")).particles
        finally:
            proj.close()

    a, b = table(ref), table(got)
    xyz = list(truth.XYZ)
    out = {"n": [int(len(a)), int(len(b))], "same_set": True, "same_order": True, "order_swaps": {}}
    for name in sorted(set(a["rlnTomoName"]) | set(b["rlnTomoName"])):
        x = a.loc[a["rlnTomoName"] == name, xyz].to_numpy(float)
        y = b.loc[b["rlnTomoName"] == name, xyz].to_numpy(float)
        if x.shape != y.shape or not np.array_equal(x[np.lexsort(x.T)], y[np.lexsort(y.T)]):
            out["same_set"] = False
            continue
        moved = np.flatnonzero(np.any(x != y, axis=1))
        if moved.size:
            out["same_order"] = False
            out["order_swaps"][name] = moved.tolist()
    return out


def compare(ref: Path, got: Path) -> dict:
    a, b = mrc_files(ref), mrc_files(got)
    maps: dict[str, dict] = {}
    identical = sorted(a) == sorted(b)
    lowest, largest = 1.0, 0.0
    for key in sorted(set(a) & set(b)):
        x, y = mrcfile.read(a[key]), mrcfile.read(b[key])
        if x.shape != y.shape:
            identical = False
            maps[key] = {"shape": [list(x.shape), list(y.shape)]}
            lowest = -1.0
            continue
        if np.array_equal(x, y):
            continue
        identical = False
        x64, y64 = x.astype(np.float64).ravel(), y.astype(np.float64).ravel()
        cc = float(np.corrcoef(x64, y64)[0, 1]) if x64.std() > 0 and y64.std() > 0 else float("nan")
        d = float(np.abs(x64 - y64).max())
        maps[key] = {"correlation": cc, "max_abs_difference": d, "ref_std": float(x64.std())}
        lowest, largest = min(lowest, cc), max(largest, d)
    ta, tb = text_numbers(ref), text_numbers(got)
    geom: dict[str, dict] = {}
    for key in sorted(set(ta) | set(tb)):
        x, y = ta.get(key), tb.get(key)
        if x is None or y is None or x.shape != y.shape:
            geom[key] = {"same_count": False, "n": [None if x is None else len(x), None if y is None else len(y)]}
            continue
        geom[key] = {"same_count": True, "n": int(len(x)),
                     "max_abs_difference": float(np.abs(x - y).max()) if len(x) else 0.0}
    final = {}
    for sid in MAPS:
        fa = [v for k, v in a.items() if k == f"{sid}/map.mrc"]
        fb = [v for k, v in b.items() if k == f"{sid}/map.mrc"]
        if fa and fb:
            final[sid] = float(np.corrcoef(mrcfile.read(fa[0]).ravel(), mrcfile.read(fb[0]).ravel())[0, 1])
    per_step: dict[str, dict] = {}
    for key in a:
        step = key.split("/")[0]
        st = per_step.setdefault(step, {"files": 0, "identical": 0, "lowest_correlation": 1.0})
        st["files"] += 1
        if key not in maps:
            st["identical"] += 1
        elif "correlation" in maps[key]:
            st["lowest_correlation"] = min(st["lowest_correlation"], maps[key]["correlation"])
    worst = dict(sorted(maps.items(), key=lambda kv: kv[1].get("correlation", -2.0))[:20])
    return {"picks": picks_as_sets(ref, got), "mrc_per_step": per_step,
            "mrc_files": len(a), "mrc_identical": identical, "mrc_lowest_correlation": lowest,
            "mrc_largest_difference": largest, "mrc_differing_count": len(maps), "mrc_differing": worst,
            "geometry_files": len(geom), "geometry_same_counts": all(g["same_count"] for g in geom.values()),
            "geometry_largest_difference": max((g.get("max_abs_difference", np.inf) for g in geom.values()),
                                               default=0.0),
            "geometry": geom, "final_map_correlation": final}


def make_executor(kind: str, out: Path, memory: str) -> Executor:
    if kind == "inline":
        return InlineExecutor()
    if kind == "local":
        return LazyExecutor("local", ClusterSettings(kind="local"))
    logs = out / "slurm_logs"
    logs.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    return DaskExecutor("slurm", ClusterSettings(kind="slurm", slurm=SlurmSettings(
        cores=1, memory=memory, walltime="06:00:00", min_jobs=cores, max_jobs=cores, log_directory=str(logs))))


def worker_memory(ex: Executor) -> dict:
    inner = ex.inner() if isinstance(ex, LazyExecutor) and ex.started else ex
    client = getattr(inner, "client", None)
    if client is None:
        return {}
    limits = {a: w.get("memory_limit") for a, w in client.scheduler_info(n_workers=-1)["workers"].items()}
    return {a: {"peak_rss_bytes": int(p), "limit_bytes": limits.get(a)} for a, p in client.run(_peak_rss).items()}


def run_all(project: Path, ex: Executor) -> dict[str, float]:
    proj = Project.open(project)
    times: dict[str, float] = {}
    try:
        for sid in registry.ids():
            if proj.data.steps[sid].status == "done":
                rec = _seconds(proj.data.steps[sid].model_dump())
                times[sid] = float("nan") if rec is None else rec
                continue
            t = time.perf_counter()
            st = run_to_end(StepRun(proj, sid, executor=ex))
            times[sid] = round(time.perf_counter() - t, 2)
            print(f"  {sid:24s} {st.status:6s} {times[sid]:8.1f} s  load {os.getloadavg()[0]:.1f}", flush=True)
            if st.status != "done":
                raise RuntimeError(f"{sid}: {st.error}")
    finally:
        proj.close()
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="full")
    ap.add_argument("--out-dir", type=Path, default=Path("/tmp/full"))
    ap.add_argument("--clusters", default="inline,local,slurm")
    ap.add_argument("--slurm-memory", default="3800MB", help="memory per SLURM job (one worker each)")
    ap.add_argument("--results", type=Path, default=Path(__file__).resolve().parent / "results")
    ap.add_argument("--compare-only", action="store_true",
                    help="recompute the comparisons with the inline run for the runs already recorded")
    args = ap.parse_args()
    if args.compare_only:
        res_path = args.results / f"full_clusters_{args.preset}.json"
        result = json.loads(res_path.read_text())
        for kind, run in result["runs"].items():
            if kind != "inline" and (args.out_dir / kind / "project").exists():
                run["vs_inline"] = compare(args.out_dir / "inline" / "project", args.out_dir / kind / "project")
                v = run["vs_inline"]
                print(kind, json.dumps({k: v[k] for k in ("picks", "final_map_correlation", "geometry_same_counts",
                                                          "geometry_largest_difference", "mrc_per_step")}))
        res_path.write_text(json.dumps(result, indent=1, default=float))
        return 0
    out: Path = args.out_dir
    t0 = time.perf_counter()
    base = prepare_demo(out / "base", preset=args.preset)
    t_sim = time.perf_counter() - t0
    print(f"data and project in {base.parent} ({t_sim:.0f} s)", flush=True)
    res_path = args.results / f"full_clusters_{args.preset}.json"
    result: dict = json.loads(res_path.read_text()) if res_path.exists() else {}
    result.update({"preset": args.preset, "machine": platform.platform(), "cpus": os.cpu_count(),
                   "simulation_s": result.get("simulation_s") or round(t_sim, 1)})
    result.setdefault("runs", {})
    truth_dir = out / "base" / "truth"
    for kind in args.clusters.split(","):
        dst = out / kind
        project = dst / "project"
        proj = Project.open(project) if project.exists() else None
        complete = proj is not None and all(s.status == "done" for s in proj.data.steps.values())
        if proj is not None:
            proj.close()
        if not complete:
            if dst.exists():
                shutil.rmtree(dst)
            dst.mkdir(parents=True)
            for name in ("data", "truth"):
                (dst / name).symlink_to(out / "base" / name)
            shutil.copytree(base, project, symlinks=True)
        print(f"{kind}:", flush=True)
        load0 = os.getloadavg()
        t0 = time.perf_counter()
        ex = make_executor(kind, dst, args.slurm_memory)
        mem: dict = {}
        jobs: list[str] = []
        try:
            times = run_all(project, ex)
            wall = time.perf_counter() - t0
            mem = worker_memory(ex) if not complete else result["runs"].get(kind, {}).get("worker_memory", {})
            if isinstance(ex, DaskExecutor):
                jobs = ex.job_ids()
        finally:
            ex.close()
        if kind == "slurm" and not complete:
            logs = sorted((dst / "slurm_logs").glob("dask-worker-*.err"))
            jobs = sorted(set(jobs) | {f.stem.split("-")[-1] for f in logs})
            acct = subprocess.run(["squeue", "-h", "-o", "%i %j %T"], capture_output=True, text=True).stdout
        proj = Project.open(project)
        try:
            picks = truth.pick_errors(proj.output_path("pick", "particles"), truth_dir)
            maps = {sid: truth.map_errors(proj.output_path(sid, "average"), truth_dir) for sid in MAPS}
        finally:
            proj.close()
        run = {"step_s": times, "steps_total_s": round(float(np.nansum(list(times.values()))), 1),
               "wall_s": round(wall, 1) if not complete else result["runs"].get(kind, {}).get("wall_s"),
               "load_before": [round(x, 2) for x in load0], "load_after": [round(x, 2) for x in os.getloadavg()],
               "worker_memory": mem, "picking": picks, "maps": maps}
        if kind == "slurm":
            run["slurm_jobs"] = jobs if not complete else result["runs"].get(kind, {}).get("slurm_jobs")
            if not complete:
                run["squeue_after"] = acct
        if kind != "inline" and (out / "inline" / "project").exists():
            run["vs_inline"] = compare(out / "inline" / "project", project)
        result["runs"][kind] = run
        result["date"] = datetime.now().isoformat(timespec="seconds")
        args.results.mkdir(parents=True, exist_ok=True)
        res_path.write_text(json.dumps(result, indent=1, default=float))
        rf = maps["refine_fine"]
        line = (f"{kind}: steps {run['steps_total_s']:.0f} s; refine_fine {rf['resolution_A']} Å, vs truth 0.5 at "
                f"{rf['fsc_vs_truth_0.5_A']:.2f} Å; picks {truth.pick_totals(picks)}")
        if "vs_inline" in run:
            v = run["vs_inline"]
            line += (f"; vs inline: picks {v['picks']['same_set']} (order {v['picks']['same_order']}), "
                     f"MRC identical {v['mrc_identical']}, lowest cc {v['mrc_lowest_correlation']:.7f}, "
                     f"geometry counts same {v['geometry_same_counts']}, largest diff "
                     f"{v['geometry_largest_difference']:.3g}, final map cc {v['final_map_correlation']}")
        print(line, flush=True)
    print(f"wrote {res_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
