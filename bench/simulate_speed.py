"""The simulator old vs new in one run (issue 20, item 5): ``tomoguide simulate --preset small`` timed with
``app/compute/simulate.py`` as it was at ``--old-commit`` (loaded from git into this process and put in place of
the module that :mod:`tomoguide.synth` uses) and as it is now, alternately, on the same parameters.

    python bench/simulate_speed.py [--preset small] [--repeats 1] [--old-commit c6fcd85]
                                   [--out bench/results/simulate_speed_<preset>.json]

Recorded: each run's wall time (best per version) and CPU time (all threads of the process: the new code draws
the Poisson counts in a second thread, so its gain is in wall time when a core is free), the load average before
and after, and the comparison of the
two outputs: every truth file byte-identical or not (list of those that differ), and over the movies the
number of pixels whose counts differ (the new code computes the drift phase ramp as a product of two 1D ramps:
float rounding of the Poisson means can move a count on rare pixels; the random streams are unchanged).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _module_at(commit: str, path: str, name: str) -> Any:
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:{path}"], capture_output=True, text=True,
                         check=True).stdout
    tmp = Path(tempfile.mkdtemp(prefix="simold_")) / f"{name}.py"
    tmp.write_text(src)
    spec = importlib.util.spec_from_file_location(name, tmp)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def _same_content(f: Path, g: Path) -> bool:
    """Byte-identical, or identical but for the time stamps that writers put in (an MRC label, the STAR
    header's "Created by ... at" line)."""
    from tomoguide.compute.io import mrc

    if f.read_bytes() == g.read_bytes():
        return True
    if f.suffix == ".mrc":
        (x, hx), (y, hy) = mrc.read_mrc(f), mrc.read_mrc(g)
        return bool(np.array_equal(x, y)) and x.dtype == y.dtype and f.stat().st_size == g.stat().st_size
    if f.suffix == ".star":
        keep = [[ln for ln in p.read_text().splitlines() if not ln.startswith("# Created by")] for p in (f, g)]
        return keep[0] == keep[1]
    return False


def _compare(a: Path, b: Path) -> dict[str, Any]:
    from tomoguide.compute.io import mrc

    truth_diff = []
    n_truth = 0
    for f in sorted((a / "truth").rglob("*")):
        if f.is_file():
            n_truth += 1
            g = b / f.relative_to(a)
            if g.exists() and not _same_content(f, g):
                truth_diff.append(str(f.relative_to(a)))
    n_diff = 0
    max_diff = 0
    other_diff = []
    for f in sorted((a / "data").rglob("*")):
        if not f.is_file():
            continue
        g = b / f.relative_to(a)
        if f.read_bytes() == g.read_bytes():
            continue
        if f.suffix in (".mdoc", ".star") and _same_content(f, g):
            continue
        if f.suffix == ".mrc":
            x = mrc.read_mrc(f)[0].astype(np.int64)
            y = mrc.read_mrc(g)[0].astype(np.int64)
            n_diff += int(np.count_nonzero(x != y))
            max_diff = max(max_diff, int(np.abs(x - y).max()))
        else:
            other_diff.append(str(f.relative_to(a)))
    return {"n_truth_files": n_truth, "truth_files_differing_beyond_time_stamps": truth_diff,
            "movie_pixels_differing": n_diff,
            "movie_max_count_difference": max_diff, "other_data_files_differing": other_diff}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--old-commit", default="c6fcd85")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    from tomoguide import synth
    from tomoguide.compute import simulate as sim_new

    sim_old = _module_at(args.old_commit, "app/compute/simulate.py", "simulate_old")
    params = synth.PRESETS[args.preset]
    work = args.work or Path(tempfile.mkdtemp(prefix="simspeed_"))
    res: dict[str, Any] = {"preset": args.preset, "old_code": f"app/compute/simulate.py at {args.old_commit}",
                           "load_before": os.getloadavg(), "cpu_count": os.cpu_count()}
    times: dict[str, list[float]] = {"old": [], "new": []}
    cpu: dict[str, list[float]] = {"old": [], "new": []}
    for _ in range(args.repeats):
        for name, mod in (("old", sim_old), ("new", sim_new)):
            synth.simulate = mod
            try:
                out = work / name
                shutil.rmtree(out, ignore_errors=True)
                t = time.perf_counter()
                c = time.process_time()
                synth.generate(out, params)
                times[name].append(time.perf_counter() - t)
                cpu[name].append(time.process_time() - c)
            finally:
                synth.simulate = sim_new
            print(f"{name}: {times[name][-1]:.1f} s wall, {cpu[name][-1]:.1f} s CPU (all threads)", flush=True)
    res["seconds"] = times
    res["best_old_s"] = min(times["old"])
    res["best_new_s"] = min(times["new"])
    res["ratio_old_over_new"] = res["best_old_s"] / res["best_new_s"]
    res["cpu_seconds_all_threads"] = cpu
    res["cpu_ratio_old_over_new"] = min(cpu["old"]) / min(cpu["new"])
    res["load_after"] = os.getloadavg()
    res["comparison"] = _compare(work / "old", work / "new")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    out_path = args.out or ROOT / "bench" / "results" / f"simulate_speed_{args.preset}.json"
    out_path.write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
