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

FIRST = "align"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--tag", default="across")
    ap.add_argument("--no-across-offsets", action="store_true")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from tilt_series_to_tomograms import run_and_measure

    from tomoguide.compute import align as align_module
    from tomoguide.project import Project

    if args.no_across_offsets:
        align_module.align_tilt_series = functools.partial(align_module.align_tilt_series, across_offsets=False)
    project_dir = args.work / "project"
    truth_dir = args.work / "truth"
    result: dict = {"preset": args.preset, "across_offsets": not args.no_across_offsets,
                    "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                "platform": platform.platform(), "load_average_1min": os.getloadavg()[0]}}
    with Project.open(project_dir) as proj:
        proj.mark_stale_from(FIRST, reason="bench/align_tomograms.py: alignment code changed", include_self=True)
        proj.save()
    code = run_and_measure(project_dir, truth_dir, result)
    if code != 0:
        return code
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
