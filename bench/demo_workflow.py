"""The whole demo, movies to the average, timed step by step, and the final map measured against the truth (issue 7).

    python bench/demo_workflow.py [--out-dir /tmp/demo_bench] [--preset small|full] [--from STEP] [--results bench/results]
                                  [--cluster inline|local|slurm]

Runs what ``tomoguide demo --preset small --no-gui`` runs (simulation, then every step in wizard order with the
demo's parameters) and records the wall time of the simulation and of every step. ``--from STEP`` reuses an
existing project in ``--out-dir`` and re-runs from that step on (the earlier steps' times are read from the project).

Measured against the simulator's truth (``OUT/truth``):
* picking: recall and false-pick fraction (matched within half a particle radius after the alignment origin's shift);
* for every averaging step's map: resolution (half-map FSC 0.143) and its ratio to Nyquist; FSC of the map
  ((half1 + half2) / 2, unfiltered) against truth/apoferritin.mrc at the same voxel size (soft spherical mask,
  75 Å radius) and its 0.5 / 0.143 crossings; correlation with the truth and with its mirror image (hand);
* orientations: angle between each refined rotation and the true one, minimised over the 24 operators of O,
  median and 90th percentile, and the RMS error of the particle centres (Å).
Writes ``RESULTS/demo_workflow_<preset>.json`` and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np

from tomoguide import truth
from tomoguide.demo import prepare_demo
from tomoguide.project import Project
from tomoguide.runner import StepRun, run_to_end
from tomoguide.steps import registry


def _seconds(step: dict) -> float | None:
    if not step.get("started") or not step.get("finished"):
        return None
    return (datetime.fromisoformat(step["finished"]) - datetime.fromisoformat(step["started"])).total_seconds()


def measure_map(folder: Path, truth_dir: Path) -> dict:
    """Resolution, FSC against the truth, hand, orientations and centres of one averaging step's output: the
    measure ``tomoguide score`` grades (:func:`tomoguide.truth.map_errors`)."""
    return truth.map_errors(folder, truth_dir)


def measure_picks(proj: Project, truth_dir: Path) -> dict:
    """Picks against the true particles per tomogram (:func:`tomoguide.truth.pick_errors`)."""
    return truth.pick_errors(proj.output_path("pick", "particles"), truth_dir)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", type=Path, default=Path("/tmp/demo_bench"))
    ap.add_argument("--preset", default="small")
    ap.add_argument("--from", dest="from_step", default=None)
    ap.add_argument("--results", type=Path, default=Path(__file__).resolve().parent / "results")
    ap.add_argument("--cluster", default="inline", choices=["inline", "local", "slurm"],
                    help="where the steps' units run (tomoguide.cluster); inline = this process, as before issue 18")
    args = ap.parse_args()
    from tomoguide.cluster import LazyExecutor

    executor = LazyExecutor(args.cluster)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    project_dir = prepare_demo(args.out_dir, preset=args.preset)
    t_sim = time.perf_counter() - t0
    proj = Project.open(project_dir)
    ids = registry.ids()
    start = ids.index(args.from_step) if args.from_step else 0
    times: dict[str, float] = {}
    for sid in ids:
        if ids.index(sid) < start and proj.data.steps[sid].status == "done":
            continue
        t = time.perf_counter()
        status = run_to_end(StepRun(proj, sid, executor=executor)).status
        times[sid] = time.perf_counter() - t
        print(f"{sid:32s} {status:6s} {times[sid]:7.1f} s", flush=True)
        if status != "done":
            print(proj.data.steps[sid].error, file=sys.stderr)
            return 1
    for sid in ids:
        if sid not in times:  # not re-run here: the time the project recorded
            rec = _seconds(proj.data.steps[sid].model_dump())
            times[sid] = float("nan") if rec is None else rec
    truth_dir = args.out_dir / "truth"
    executor.close()
    result = {
        "preset": args.preset, "cluster": args.cluster, "machine": platform.platform(), "cpus": os.cpu_count(),
        "load_average_before": load0, "load_average_after": os.getloadavg(),
        "simulation_s": t_sim if not args.from_step else None,
        "step_s": times, "steps_total_s": float(np.nansum(list(times.values()))),
        "total_s": (t_sim if not args.from_step else 0.0) + float(np.nansum(list(times.values()))),
        "picking": measure_picks(proj, truth_dir),
        "maps": {sid: measure_map(proj.output_path(sid, "average"), truth_dir)
                 for sid in ("initial_model", "refine", "reconstruct_particle", "refine_fine")},
    }
    proj.close()
    args.results.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.cluster == "inline" else f"_{args.cluster}"
    path = args.results / f"demo_workflow_{args.preset}{suffix}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"simulation {t_sim:.0f} s; steps {result['steps_total_s']:.0f} s; total {result['total_s']:.0f} s")
    for sid, m in result["maps"].items():
        print(f"{sid:22s} res {m['resolution_A'] or float('nan'):6.2f} Å (Nyq {m['nyquist_A']:.1f}); vs truth 0.5 at "
              f"{m['fsc_vs_truth_0.5_A']:.2f} Å; cc {m['cc_truth']:.3f} / mirrored {m['cc_truth_mirrored']:.3f}; "
              f"angles median {m['angle_error_deg']['median']:.2f}° p90 {m['angle_error_deg']['p90']:.2f}°")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
