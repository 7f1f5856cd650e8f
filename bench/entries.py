"""Entry points (a) and (b) of issue 17 on a simulated preset: the same tomogram as the full workflow?

    python bench/entries.py [--preset small] [--out-dir /tmp/entries_bench] [--results bench/results]

1. ``tomoguide demo --preset PRESET --no-gui --until reconstruct``: the full workflow from the movies;
2. entry (a): the stacks its ``motion_ctf`` wrote (``NAME.st``, ``NAME.rawtlt``, a two-column dose list) imported as
   tilt series without movies, run to the tomogram;
3. entry (b): the project exported for IMOD (``tomoguide export --to imod``), its CTF written as CTFFIND text (and
   ctfplotter ``.defocus`` for every second series); a project importing the stacks and reading alignment and CTF
   from those files, run to the tomogram.

For each entry and tilt series: the correlation of its tomogram with the full workflow's (voxel by voxel, same
grid), and the wall time of the steps it ran. Writes ``RESULTS/entries.json`` (small) or ``entries_<preset>.json``. The helpers are those of
``tests/steps/test_entries_ab.py`` (the tiny-preset test of the same thing).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import time
from pathlib import Path


def _helpers():  # noqa: ANN202
    path = Path(__file__).resolve().parents[1] / "tests" / "steps" / "test_entries_ab.py"
    spec = importlib.util.spec_from_file_location("entries_helpers", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--out-dir", type=Path, default=Path("/tmp/entries_bench"))
    ap.add_argument("--results", type=Path, default=Path(__file__).resolve().parent / "results")
    ap.add_argument("--reuse", action="store_true", help="reuse the full project in OUT/demo when it is there")
    args = ap.parse_args()
    h = _helpers()
    from tomoguide.cli import run_steps
    from tomoguide.demo import prepare_demo

    out = args.out_dir
    full = out / "demo" / "project"
    t0 = time.perf_counter()
    if not (args.reuse and (full / "project.json").is_file()):
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        full = prepare_demo(out / "demo", preset=args.preset)
    t_sim = time.perf_counter() - t0
    t0 = time.perf_counter()
    assert run_steps(full, until=h.RECONSTRUCT, quiet=True) == 0
    t_full = time.perf_counter() - t0
    results: dict = {"preset": args.preset, "machine": platform.node(), "cpus": os.cpu_count(),
                     "load_avg_start": os.getloadavg(), "simulation_s": round(t_sim, 1),
                     "full_workflow_to_reconstruct_s": round(t_full, 1), "entries": {}}
    for name, fn in (("a_tilt_series", h.entry_a), ("b_alignment_ctf_files", h.entry_b)):
        work = out / name
        if work.exists():
            shutil.rmtree(work)
        work.mkdir()
        t0 = time.perf_counter()
        _, cc = fn(full, work)
        results["entries"][name] = {"correlation_with_full_workflow": {k: round(v, 6) for k, v in cc.items()},
                                    "min_correlation": round(min(cc.values()), 6),
                                    "wall_s": round(time.perf_counter() - t0, 1)}
        print(f"{name}: correlation with the full workflow's tomograms {cc} ({results['entries'][name]['wall_s']} s)")
    results["load_avg_end"] = os.getloadavg()
    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / ("entries.json" if args.preset == "small" else f"entries_{args.preset}.json")
    path.write_text(json.dumps(results, indent=1))
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
