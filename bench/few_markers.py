"""How many particles the alignment's marker refinement needs (the align step's ``min_markers`` default): on the tiny
preset (16 particles, 7 views over ±30°, bin 5) simulated with several seeds, the align step with its defaults,
then :func:`tomoguide.compute.markers.refine_with_markers` from the patch-tracking geometry limited to the 6, 7
and 8 strongest markers, each tilt-axis error against the truth beside patch tracking's own.

    python bench/few_markers.py [--seeds 1-12] [--work /tmp/few_markers] [--out bench/results/few_markers_tiny.json]

Per seed: ``step_axis_error_deg`` and ``step_n_markers`` (the step as it ran; None: it kept patch tracking),
``patch_axis_error_deg`` (patch tracking alone), ``markers_N`` = [markers used, axis error °] with at most N.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path
from typing import Any

import mrcfile
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _latest(folder: Path, name: str) -> Path:
    return sorted(folder.glob(f"run-*/{name}"))[-1]


def one_seed(seed: int, work: Path) -> dict[str, Any]:
    from tomoguide import synth, truth
    from tomoguide.compute.markers import refine_with_markers
    from tomoguide.demo import demo_params
    from tomoguide.project import Project
    from tomoguide.runner import StepRun, run_to_end
    from tomoguide.steps import registry
    from tomoguide.steps.records import SeriesSet

    out = work / f"seed{seed}"
    shutil.rmtree(out, ignore_errors=True)
    p = synth.PRESETS["tiny"].model_copy(update={"seed": seed})
    synth.generate(out / "data_root", p)
    params = demo_params(out / "data_root" / "data", p)
    params["preprocess_for_alignment"] = {"binning": 5}
    proj = Project.create(out / "project", params=params)
    ids = registry.ids()
    for step in ids[: ids.index("align") + 1]:
        assert run_to_end(StepRun(proj, step)).status == "done", step
    proj.close()
    steps = out / "project" / "steps"
    pre, pre_base = SeriesSet.load(_latest(steps / "preprocess_for_alignment", "series.json"))
    ali, _ = SeriesSet.load(_latest(steps / "align", "series.json"))
    metrics = json.loads(_latest(steps / "align", "run.json").read_text())["metrics"]["series"]["TS_01"]
    stack = np.asarray(mrcfile.read(pre.series[0].path("stack", pre_base)), np.float32)
    tg = truth.true_geometry(out / "data_root" / "truth", "TS_01")
    g = ali.series[0].geometry
    row: dict[str, Any] = {"seed": seed, "step_axis_error_deg": g.tilt_axis_deg - tg.tilt_axis_deg,
                           "step_n_markers": metrics["n_markers"],
                           "patch_axis_error_deg": metrics["patch_tilt_axis_deg"] - tg.tilt_axis_deg}
    gp = g.with_xf_from_axis_and_shifts(metrics["patch_tilt_axis_deg"], g.specimen_shifts_px())
    px = g.pixel_size_binned_A
    for most in (6, 7, 8):
        try:
            m = refine_with_markers(stack, gp, diameter_px=120.0 / px, thickness_px=max(8, int(round(1000.0 / px))),
                                    max_count=most, min_count=3)
            row[f"markers_{most}"] = [m.n_markers, m.geometry.tilt_axis_deg - tg.tilt_axis_deg]
        except ValueError as exc:
            row[f"markers_{most}"] = str(exc)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="1-12", help="first-last")
    ap.add_argument("--work", type=Path, default=Path("/tmp/few_markers"))
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "few_markers_tiny.json")
    args = ap.parse_args(argv)
    a, b = (int(x) for x in args.seeds.split("-"))
    rows = []
    for seed in range(a, b + 1):
        rows.append(one_seed(seed, args.work))
        print(json.dumps(rows[-1]), flush=True)
    res = {"preset": "tiny", "load_after": os.getloadavg(), "seeds": rows}
    args.out.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
