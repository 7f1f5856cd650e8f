"""The simulator old vs new in one run (issue 20, item 5): ``tomoguide simulate --preset small`` with the whole
package as it was at ``--old-commit`` (``git archive`` into a scratch folder, run in a child process with that
copy first on ``PYTHONPATH``) and as it is now (the same, from the working tree), alternately, on the same
parameters and the same machine.

    python bench/simulate_speed.py [--preset small] [--repeats 2] [--old-commit b69f835]
                                   [--out bench/results/simulate_speed_<preset>.json]

Recorded: each run's ``synth.generate`` wall time (imports excluded; best per version) and the child's CPU time
(all threads), the load average before and after, and the comparison of the two outputs: every truth file
byte-identical or not (list of those that differ), and over the movies the number of pixels whose counts differ.
From 2026-12 the movies are drawn from other random streams than b69f835's (one stream per view, so views run in
parallel threads; counts by inversion of the distribution function): their pixels differ, so the record also
compares what must not change, each movie's mean count and each frame's count variance, old against new
(ratios, median and extremes).
"""

from __future__ import annotations

import argparse
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


def _tree_at(commit: str, work: Path) -> Path:
    """A folder whose ``tomoguide`` is the package ``app/`` of ``commit`` (``git archive``)."""
    dest = work / f"tree_{commit}"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    arch = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "app"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=arch, check=True)
    (dest / "app").rename(dest / "tomoguide")
    return dest


_CHILD = """
import json, resource, sys, time
from pathlib import Path
import tomoguide
from tomoguide import synth
assert Path(tomoguide.__file__).resolve().parent.parent == Path(sys.argv[3]).resolve(), tomoguide.__file__
t = time.perf_counter()
synth.generate(sys.argv[1], synth.PRESETS[sys.argv[2]])
wall = time.perf_counter() - t
ru = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime, "max_rss_MB": ru.ru_maxrss / 1024}))
"""


def _run_child(tree: Path, out: Path, preset: str) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    r = subprocess.run([sys.executable, "-c", _CHILD, str(out), preset, str(tree)], capture_output=True, text=True,
                       env=env, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


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
    mean_r: list[float] = []  # per movie: new mean count / old
    var_r: list[float] = []  # per frame: new count variance / old
    for f in sorted((a / "data").rglob("*")):
        if not f.is_file():
            continue
        g = b / f.relative_to(a)
        if f.suffix == ".mrc":  # the movies and the gain: read once, compared and (movies) summarised
            x = mrc.read_mrc(f)[0].astype(np.int64)
            y = mrc.read_mrc(g)[0].astype(np.int64)
            n_diff += int(np.count_nonzero(x != y))
            max_diff = max(max_diff, int(np.abs(x - y).max()))
            if x.ndim == 3 and "gain" not in f.name:
                mean_r.append(float(y.mean() / x.mean()))
                var_r.extend((y.reshape(len(y), -1).var(axis=1) / x.reshape(len(x), -1).var(axis=1)).tolist())
            continue
        if f.read_bytes() == g.read_bytes():
            continue
        if f.suffix in (".mdoc", ".star") and _same_content(f, g):
            continue
        other_diff.append(str(f.relative_to(a)))

    def summary(v: list[float]) -> dict[str, float]:
        arr = np.asarray(v)
        return {"n": len(v), "median": float(np.median(arr)), "min": float(arr.min()), "max": float(arr.max())}

    return {"n_truth_files": n_truth, "truth_files_differing_beyond_time_stamps": truth_diff,
            "movie_pixels_differing": n_diff, "movie_max_count_difference": max_diff,
            "other_data_files_differing": other_diff, "movie_mean_count_new_over_old": summary(mean_r),
            "frame_count_variance_new_over_old": summary(var_r)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--old-commit", default="b69f835")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    work = args.work or Path(tempfile.mkdtemp(prefix="simspeed_"))
    trees = {"old": _tree_at(args.old_commit, work)}
    new_tree = work / "tree_working"
    shutil.rmtree(new_tree, ignore_errors=True)
    shutil.copytree(ROOT / "app", new_tree / "tomoguide", ignore=shutil.ignore_patterns("__pycache__"))
    trees["new"] = new_tree
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    res: dict[str, Any] = {"preset": args.preset, "old_code": f"the package at {args.old_commit}",
                           "new_code": f"the working tree (HEAD {head})",
                           "load_before": os.getloadavg(), "cpu_count": os.cpu_count()}
    runs: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
    for name in ("old", "new"):  # compile the numba kernels into each tree's cache first (not timed)
        _run_child(trees[name], work / f"warm_{name}", "tiny")
        shutil.rmtree(work / f"warm_{name}", ignore_errors=True)
    for _ in range(args.repeats):
        for name in ("old", "new"):
            out = work / name
            shutil.rmtree(out, ignore_errors=True)
            r = _run_child(trees[name], out, args.preset)
            r["load_after"] = os.getloadavg()[0]
            runs[name].append(r)
            print(f"{name}: {r['wall_s']:.1f} s wall, {r['cpu_s']:.1f} s CPU, load {r['load_after']:.2f}", flush=True)
    res["runs"] = runs
    res["best_old_s"] = min(r["wall_s"] for r in runs["old"])
    res["best_new_s"] = min(r["wall_s"] for r in runs["new"])
    res["ratio_old_over_new"] = res["best_old_s"] / res["best_new_s"]
    res["cpu_ratio_old_over_new"] = min(r["cpu_s"] for r in runs["old"]) / min(r["cpu_s"] for r in runs["new"])
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
