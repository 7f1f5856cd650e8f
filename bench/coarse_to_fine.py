"""The fine refinement with and without the coarse-to-fine local search, on one project (issue 20).

    python bench/coarse_to_fine.py PROJECT [--out-dir /tmp/coarse_to_fine] [--results bench/results/coarse_to_fine.json]

``PROJECT``: a project whose steps up to ``refine_fine`` are done, beside its ``truth/`` folder (a simulated session:
``tomoguide demo`` or ``bench/scenarios.py``). The project folder's parent (data, truth, project) is copied twice
into ``--out-dir``; in each copy ``refine_fine`` runs again in this process (``--cluster inline``: the searches run
here, where the switch below applies) with its recorded parameters:

* ``coarse_to_fine``: as the program runs it (:func:`tomoguide.compute.refine.search_poses`' default);
* ``every_point``: every candidate rotation on every point (``COARSE_MIN_POINTS`` set out of reach).

Each copy's ``refine_fine`` is scored against the truth (``tomoguide score --json``: FSC 0.5 against the true map and
the half maps' resolution over Nyquist, the hand, the median orientation error, the centres), and the kernel's calls
are counted (candidates per particle and points per call: which iterations went coarse to fine). The step's wall
time is recorded with the load average (the machine is shared).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any


def _run(project: Path, coarse: bool) -> dict[str, Any]:
    from tomoguide.cli import main as cli_main
    from tomoguide.compute import refine as RF

    calls: list[tuple[int, int]] = []
    kernel, limit = RF._local_scores, RF.COARSE_MIN_POINTS

    def counted(*args: Any) -> None:
        calls.append((int(args[5].shape[1]), int(args[7].shape[0])))  # candidates per particle, points
        kernel(*args)

    RF._local_scores = counted
    if not coarse:
        RF.COARSE_MIN_POINTS = 1 << 62
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    try:
        rc = cli_main(["run", str(project), "--only", "refine_fine", "--force", "--cluster", "inline"])
    finally:
        RF._local_scores, RF.COARSE_MIN_POINTS = kernel, limit
    wall = time.perf_counter() - t0
    if rc:
        raise SystemExit(f"{project}: refine_fine failed (exit {rc})")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        cli_main(["score", str(project), "--step", "refine_fine", "--json"])
    score = json.loads(out.getvalue())
    measures = {m["key"].rsplit(".", 1)[-1]: {"value": m["value"], "text": m["text"]}
                for m in score["steps"][0]["measures"]}
    kinds = sorted({c for c in calls})
    return {"step_wall_s": wall, "load_average_before": list(load0), "load_average_after": list(os.getloadavg()),
            "kernel_calls": len(calls), "calls_candidates_points": [list(k) for k in kinds], "measures": measures}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("project", type=Path)
    ap.add_argument("--out-dir", type=Path, default=Path("/tmp/coarse_to_fine"))
    ap.add_argument("--results", type=Path,
                    default=Path(__file__).resolve().parent / "results" / "coarse_to_fine.json")
    args = ap.parse_args()
    src = args.project.resolve().parent
    res: dict[str, Any] = {"project": str(args.project), "cpus": os.cpu_count()}
    for name, coarse in (("coarse_to_fine", True), ("every_point", False)):
        dst = args.out_dir / name
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(src, dst, symlinks=True)
        (dst / args.project.name / "project.lock").unlink(missing_ok=True)
        res[name] = _run(dst / args.project.name, coarse)
        m = res[name]["measures"]
        print(f"{name:15s} {res[name]['step_wall_s']:6.1f} s  FSC-truth {m['fsc_truth']['text']}; half maps "
              f"{m['resolution']['text']}; angles {m['angles']['text']}", flush=True)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(args.results.read_text()) if args.results.exists() else {}
    old[str(args.project)] = res
    args.results.write_text(json.dumps(old, indent=1, default=float))
    print(f"written {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
