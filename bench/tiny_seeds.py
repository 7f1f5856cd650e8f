"""The workflow's front half with defaults only on the hardest preset, over many specimens: the tiny preset (one
7-view series over ±30°, 16 particles) simulated with several seeds, run from the movies to ``pick`` with the import's
parameters only (as ``tomoguide demo --preset tiny`` does). Per seed: the tilt-axis error and the markers the
alignment used, and the picks against the truth (recall, false fraction); beside them the automatic threshold of
the picking step's earlier rule (``app/compute/pick.py`` at ``--old-commit``, loaded from git) on the same peak
scores, and how many peaks it would keep.

    python bench/tiny_seeds.py [--seeds 1-12] [--old-commit 0a3e212] [--work /tmp/tiny_seeds]
                               [--out bench/results/tiny_seeds.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from kernels_speed import _module_at  # noqa: E402  (bench scripts are not a package)

MATCH_A = 30.0  # half the apoferritin radius, as bench/pick.py


def one_seed(seed: int, work: Path, old_pick: Any) -> dict[str, Any]:
    from tomoguide import synth, truth
    from tomoguide.compute import pick
    from tomoguide.compute.io.star import read_particles_star
    from tomoguide.demo import demo_import_params
    from tomoguide.project import Project
    from tomoguide.runner import StepRun, run_to_end
    from tomoguide.steps import registry

    out = work / f"seed{seed}"
    shutil.rmtree(out, ignore_errors=True)
    p = synth.PRESETS["tiny"].model_copy(update={"seed": seed})
    synth.generate(out / "sim", p)
    row: dict[str, Any] = {"seed": seed}
    with Project.create(out / "project", params={"import_movies": demo_import_params(out / "sim" / "data")}) as proj:
        ids = registry.ids()
        for step in ids[: ids.index("pick") + 1]:
            st = run_to_end(StepRun(proj, step))
            if st.status != "done":
                row["failed_step"], row["error"] = step, str(st.error)
                return row
        al = proj.data.steps["align"].metrics["series"]["TS_01"]
        tg = truth.true_geometry(out / "sim" / "truth", "TS_01")
        row["axis_error_deg"] = float(al["tilt_axis_deg"] - tg.tilt_axis_deg)
        row["n_markers"] = al["n_markers"]
        ours = read_particles_star(proj.output_path("pick", "particles")).particles
        pk_run = proj.output_path("pick", "particles").parent
    true = read_particles_star(out / "sim" / "truth" / "particles.star").particles
    cols = [f"rlnCenteredCoordinate{a}Angst" for a in "XYZ"]
    pa, ta = ours[cols].to_numpy(float), true[cols].to_numpy(float)
    shift = pick.register_translation(pa, ta, max_shift=120.0, tolerance=MATCH_A)
    m = pick.match_to_truth(pa + shift, ta, max_distance=MATCH_A)
    row.update(n_true=len(ta), n_picked=len(pa), recall=float(m["recall"]), false_fraction=float(m["false_fraction"]))
    scores = np.load(pk_run / "scores.npz")["TS_01_peak_scores"]
    new, old = pick.automatic_threshold(scores), old_pick.automatic_threshold(scores)
    row["threshold"] = {"new": [new.how, float(new.threshold), int(np.sum(scores >= new.threshold))],
                        "old": [old.how, float(old.threshold), int(np.sum(scores >= old.threshold))]}
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="1-12", help="first-last")
    ap.add_argument("--old-commit", default="0a3e212")
    ap.add_argument("--work", type=Path, default=Path("/tmp/tiny_seeds"))
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "tiny_seeds.json")
    args = ap.parse_args(argv)
    old_pick = _module_at(args.old_commit, "app/compute/pick.py", "tomoguide.compute.pick_old")  # its relative imports
    a, b = (int(x) for x in args.seeds.split("-"))
    res: dict[str, Any] = {"preset": "tiny", "old_commit": args.old_commit, "load_before": os.getloadavg(),
                           "seeds": []}
    for seed in range(a, b + 1):
        res["seeds"].append(one_seed(seed, args.work, old_pick))
        print(json.dumps(res["seeds"][-1]), flush=True)
    res["load_after"] = os.getloadavg()
    args.out.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
