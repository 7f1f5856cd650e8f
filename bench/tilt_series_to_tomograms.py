"""Benchmark of workflow steps 5-11 (issue 6) on the simulated demo data: time per step and accuracy vs truth.

    python bench/tilt_series_to_tomograms.py --preset small [--dir /tmp/tomoguide-bench-small] [--out bench/results]
                                             [--seed N] [--realign]

Runs (or reuses) the demo project through ``reconstruct`` and writes ``tilt_series_to_tomograms_<preset>.json``:
wall time of each step; tilt-axis error and gauge-free per-view shift RMS of the alignment (at the alignment
binning); defocus errors of the CTF estimation on tilt series (|tilt| ≤ 45°); the tomograms' correlation with the
true specimen volume, with the z-mirrored truth, and with the same reconstruction made with the true alignment
(both WBP and SIRT), also with only the unobservable tilt-angle offset taken from the truth
(``ratio_with_true_tilt_offset``). ``--seed N`` simulates another specimen (file tag ``_seedN``); ``--realign``
runs the alignment again even where the project has it (after a change of the alignment code).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

from tomoguide import truth
from tomoguide.cli import run_steps
from tomoguide.demo import prepare_demo
from tomoguide.project import Project
from tomoguide.steps import registry

FIRST, LAST = "align", "reconstruct"


def run_and_measure(project_dir: Path, truth_dir: Path, result: dict, *, with_ctf: bool = False) -> int:
    """Run the steps up to ``reconstruct`` with WBP and then SIRT and add to ``result``: the wall time of every
    step from align on, each tomogram against the truth and against the same reconstruction with the true
    alignment, the alignment errors (and, ``with_ctf``, the CTF errors and the exclusions). Returns the exit
    status of the steps (0 = all done)."""
    ids = registry.ids()
    steps = ids[ids.index(FIRST): ids.index(LAST) + 1]
    for method in ("WBP", "SIRT"):
        code = run_steps(project_dir, until=LAST, quiet=True, sets={"reconstruct": {"method": method}})
        if code != 0:
            print("a step failed; see `tomoguide status`", file=sys.stderr)
            return code
        with Project.open(project_dir, readonly=True) as proj:
            result.setdefault("step_wall_time_s", {})
            for s in steps:
                key = s if s != "reconstruct" else f"reconstruct_{method}"
                result["step_wall_time_s"][key] = proj.data.steps[s].metrics.get("wall_time_s")
            result[f"tomogram_{method}"] = truth.tomograms_vs_true_alignment(
                truth_dir, proj.output_path("preprocess_for_reconstruction", "series"),
                proj.output_path("reconstruct", "tomograms"), proj.params("reconstruct"))
            if method == "WBP":
                result["alignment"] = truth.alignment_errors(truth_dir, proj.output_path("align", "series"))
                if with_ctf:
                    result["ctf_estimate"] = truth.defocus_errors(truth_dir, proj.output_path("ctf_estimate", "series"))
                    result["excluded_views"] = proj.data.steps["exclude"].metrics
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small", choices=["tiny", "small"])
    ap.add_argument("--dir", default=None)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--seed", type=int, default=None, help="simulate with this seed instead of the preset's")
    ap.add_argument("--realign", action="store_true", help="run the alignment again (and so every later step)")
    args = ap.parse_args(argv)
    tag = f"_seed{args.seed}" if args.seed is not None else ""
    work = Path(args.dir or Path(tempfile.gettempdir()) / f"tomoguide-bench-{args.preset}{tag}")
    project_dir = prepare_demo(work, preset=args.preset, seed=args.seed)
    if args.realign:
        code = run_steps(project_dir, until="preprocess_for_alignment", quiet=True)
        code = code or run_steps(project_dir, only=FIRST, force=True, quiet=True)
        if code != 0:
            return code
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(), "load_average_1min": os.getloadavg()[0]}
    result: dict = {"preset": args.preset, "seed": args.seed, "machine": machine}
    code = run_and_measure(project_dir, work / "truth", result, with_ctf=True)
    if code != 0:
        return code
    result["targets"] = {"axis_error_deg": 0.3, "shift_rms_px": 0.5, "mean_residual_px": 1.0,
                         "ctf_median_error_A": 100, "tomogram_ratio_vs_true_alignment": 0.8}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"tilt_series_to_tomograms_{args.preset}{tag}.json"
    path.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
