"""Benchmark of workflow steps 1-4 (issue 5) on the simulated demo data: time per step and accuracy vs truth.

    python bench/movies_to_tilt_series.py --preset small [--out bench/results] [--dir /tmp/tomoguide-bench-small]

Generates the preset's data and project with ``tomoguide.demo.prepare_demo`` (reused when already there with the
same simulation parameters), runs import → frame alignment + CTF → X-ray eraser → binning, and writes
``movies_to_tilt_series_<preset>.json``: wall time of each step, time per tilt of alignment and CTF, frame-shift
RMS error, defocus errors (|tilt| ≤ 45°), astigmatism-angle agreement and X-ray detection against the truth.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from tomoguide import truth
from tomoguide.cli import run_steps
from tomoguide.demo import prepare_demo
from tomoguide.project import Project

STEPS = ("import_movies", "motion_ctf", "xray_erase", "preprocess_for_alignment")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small", choices=["tiny", "small"])
    ap.add_argument("--dir", default=None, help="working folder (default: a folder under the temp dir)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args(argv)
    work = Path(args.dir or Path(tempfile.gettempdir()) / f"tomoguide-bench-{args.preset}")
    t0 = time.perf_counter()
    had_data = (work / "truth" / "summary.json").exists()
    project_dir = prepare_demo(work, preset=args.preset)
    generation_s = None if had_data else time.perf_counter() - t0
    code = run_steps(project_dir, until=STEPS[-1], quiet=True)
    if code != 0:
        print("a step failed; see `tomoguide status`", file=sys.stderr)
        return code
    with Project.open(project_dir, readonly=True) as proj:
        st = {s: proj.data.steps[s] for s in STEPS}
        motion = proj.output_path("motion_ctf", "series")
        xray = proj.output_path("xray_erase", "series")
        result = {
            "preset": args.preset,
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "load_average_1min": os.getloadavg()[0]},
            "generation_s": generation_s,
            "step_wall_time_s": {s: st[s].metrics.get("wall_time_s") for s in STEPS},
            "time_per_tilt_align_s": st["motion_ctf"].metrics.get("time_per_tilt_align_s"),
            "time_per_tilt_ctf_s": st["motion_ctf"].metrics.get("time_per_tilt_ctf_s"),
            "frame_shifts": truth.frame_shift_errors(work / "truth", motion),
            "defocus": truth.defocus_errors(work / "truth", motion),
            "xray": truth.xray_detection(work / "truth", motion, xray),
            "targets": {"frame_shift_rms_px": 0.25, "defocus_median_A": 100, "defocus_max_A": 500,
                        "astig_angle_within_10deg": 1.0, "xray_recall": 0.99, "xray_other_fraction": 1e-4},
        }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"movies_to_tilt_series_{args.preset}.json"
    path.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
