"""Steps of the workflow timed with the whole package at an old commit and with the working tree, in one run, on the
same movies (issue 20: "each ≥ 2.5× faster than today's code, measured in one bench run").

    python bench/steps_old_new.py --data /tmp/demo/data [--old-commit b69f835] [--until ctf_estimate]
                                  [--work /tmp/steps_old_new] [--out bench/results/steps_old_new.json]

Each version runs in a child process with its package first on ``PYTHONPATH`` (``git archive``, as
``bench/simulate_speed.py``): a project created on ``DATA`` with the import's parameters only
(``demo_import_params``, as ``tomoguide demo`` does), then every step up to ``--until`` in order, each timed.
The old code ran every step in its own process (no executor); the new code runs twice: ``inline`` (in this
process, all cores, as the old one) and ``local`` (the default: a local cluster of one single-threaded worker per
core, started before the first step and not timed). Order: old, new inline, new local. Only the front steps do the
same work in both versions (movies to tomograms); the averaging steps of b69f835 worked at other voxel sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from simulate_speed import _tree_at  # noqa: E402  (bench scripts are not a package)

_CHILD = """
import json, sys, time
from pathlib import Path
from tomoguide.demo import demo_import_params
from tomoguide.project import Project
from tomoguide.runner import StepRun, run_to_end
from tomoguide.steps import registry
data, out, until, cluster = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
kw = {}
ex = None
if cluster != "none":
    from tomoguide.cluster import LazyExecutor
    ex = LazyExecutor(cluster)
    ex.inner()  # started before the first step (not timed)
    kw["executor"] = ex
times = {}
with Project.create(out, params={"import_movies": demo_import_params(data)}) as proj:
    ids = registry.ids()
    for step in ids[: ids.index(until) + 1]:
        t = time.perf_counter()
        st = run_to_end(StepRun(proj, step, **kw))
        times[step] = time.perf_counter() - t
        if st.status != "done":
            times[step + "_failed"] = str(st.error)
            break
if ex is not None:
    ex.close()
print(json.dumps(times))
"""


def _run(tree: Path | None, data: Path, out: Path, until: str, cluster: str) -> dict[str, Any]:
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    shutil.rmtree(out, ignore_errors=True)
    r = subprocess.run([sys.executable, "-c", _CHILD, str(data), str(out), until, cluster], capture_output=True,
                       text=True, env=env, check=True)
    return {"step_s": json.loads(r.stdout.strip().splitlines()[-1]), "load_after": os.getloadavg()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="a session folder (movies, mdoc, gain)")
    ap.add_argument("--old-commit", default="b69f835")
    ap.add_argument("--until", default="ctf_estimate")
    ap.add_argument("--work", type=Path, default=Path("/tmp/steps_old_new"))
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "steps_old_new.json")
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    old_tree = _tree_at(args.old_commit, args.work)
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    res: dict[str, Any] = {"data": str(args.data), "old_commit": args.old_commit,
                           "new": f"working tree (HEAD {head})", "cpus": os.cpu_count(),
                           "load_before": os.getloadavg(), "runs": {}}
    configs = (("old", old_tree, "none"), ("new_inline", None, "inline"), ("new_local", None, "local"))
    for name, tree, cluster in configs:
        res["runs"][name] = _run(tree, args.data, args.work / name, args.until, cluster)
        print(name, json.dumps(res["runs"][name]), flush=True)
    old = res["runs"]["old"]["step_s"]
    res["ratio_old_over_new"] = {
        k: {v: old[s] / res["runs"][v]["step_s"][s] for v in ("new_inline", "new_local")
            for s in [k] if s in res["runs"][v]["step_s"] and res["runs"][v]["step_s"][s] > 0}
        for k in old if not k.endswith("_failed")}
    args.out.write_text(json.dumps(res, indent=1))
    print(json.dumps(res["ratio_old_over_new"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
