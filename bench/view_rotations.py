"""Per-view in-plane rotations of an alignment against the simulator's truth (issue 19: the view rotations that limit
averages at full sampling).

    python bench/view_rotations.py ROOT [ROOT ...] [--step align] [--out bench/results/view_rotations.json]

``ROOT`` holds ``project/`` and ``truth/`` (a demo or a scenario of ``bench/scenarios.py``). For every series of the
step's output (``align``, ``assign_alignment``, or ``extract_fine`` for the records corrected from the particles,
``acquisition/``) the rotation of each view's transform ``A`` (``A = R(−axis_v)``) is compared with the truth's, the
common part (the mean: an axis error, measured by the alignment bench) removed; modulo 180° (a series whose axis is
read 180° off has the same views). Reported per series: RMS and largest error over the included views, the mean
offset, and the truth's own spread (what a single tilt axis for all views would leave).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

from tomoguide import truth as T
from tomoguide.steps.records import SeriesSet


def series_of(project: Path, step: str) -> tuple[SeriesSet, Path]:
    run = sorted((project / "steps" / step).glob("run-*"))[-1]
    folder = run / "acquisition" if step == "extract_fine" else run
    return SeriesSet.load(folder)


def rotation_errors(root: Path, step: str) -> dict[str, dict[str, float]]:
    sset, _ = series_of(root / "project", step)
    return {s.name: T.view_rotation_errors(s.geometry, T.true_geometry(root / "truth", s.name)) for s in sset.series}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("roots", nargs="+", type=Path)
    ap.add_argument("--step", default="align")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "view_rotations.json")
    args = ap.parse_args()
    res = {"step": args.step, "machine": {"platform": platform.platform(), "cpus": os.cpu_count()}, "roots": {}}
    for root in args.roots:
        res["roots"][root.name] = rotation_errors(root, args.step)
        for name, r in res["roots"][root.name].items():
            print(f"{root.name:16s} {name:10s} RMS {r['rms_deg']:.3f}°  max {r['max_deg']:.3f}°  "
                  f"(truth's spread {r['truth_spread_rms_deg']:.3f}°)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(args.out.read_text()) if args.out.is_file() else {}
    old[args.step if len(args.roots) > 1 else f"{args.step}:{args.roots[0].name}"] = res
    args.out.write_text(json.dumps(old, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
