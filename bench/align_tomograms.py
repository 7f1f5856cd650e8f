"""Re-run the issue-6 steps from ``align`` to ``reconstruct`` on a copy of an existing demo project, to measure what
a change of the alignment does downstream (the tomograms' correlation with the truth vs the true alignment).

    python bench/align_tomograms.py --work /tmp/axis_work/bench_small [--tag across] [--no-across-offsets]
                                    [--out bench/results]

``WORK`` holds ``project/`` (a *copy* of a demo project that has run at least to ``preprocess_for_alignment``;
this script writes into it), ``truth/`` (the simulator's truth) and ``data`` (or the project's own data paths).
The ``align`` step and every step after it are marked stale and run again, once with WBP and once with SIRT;
the same figures as ``bench/tilt_series_to_tomograms.py`` are written to
``OUT/tilt_series_to_tomograms_<preset>_align_<tag>.json``: alignment errors against the truth
(:func:`tomoguide.truth.alignment_errors`), the tomograms' correlation with the true specimen and the ratio to the
same reconstruction with the true alignment (:func:`tomoguide.truth.tomograms_vs_true_alignment`), step times.
``--no-across-offsets`` runs the step with the plain point-per-patch model (the fit before the per-patch
across-axis offsets) by replacing :func:`tomoguide.compute.align.align_tilt_series` for this process only.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
from pathlib import Path

FIRST, LAST = "align", "reconstruct"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--tag", default="across")
    ap.add_argument("--no-across-offsets", action="store_true")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args(argv)

    from tomoguide import truth
    from tomoguide.cli import run_steps
    from tomoguide.compute import align as align_module
    from tomoguide.project import Project
    from tomoguide.steps import registry

    if args.no_across_offsets:
        align_module.align_tilt_series = functools.partial(align_module.align_tilt_series, across_offsets=False)
    project_dir = args.work / "project"
    truth_dir = args.work / "truth"
    ids = registry.ids()
    steps = ids[ids.index(FIRST): ids.index(LAST) + 1]
    result: dict = {"preset": args.preset, "across_offsets": not args.no_across_offsets,
                    "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                "platform": platform.platform(), "load_average_1min": os.getloadavg()[0]}}
    with Project.open(project_dir) as proj:
        proj.mark_stale_from(FIRST, reason="bench/align_tomograms.py: alignment code changed", include_self=True)
        proj.save()
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
    result["targets"] = {"axis_error_deg": 0.3, "shift_rms_px": 0.5, "mean_residual_px": 1.0,
                         "tomogram_ratio_vs_true_alignment": 0.8}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"tilt_series_to_tomograms_{args.preset}_align_{args.tag}.json"
    path.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("alignment", "tomogram_WBP", "tomogram_SIRT")}, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
