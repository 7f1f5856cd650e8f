"""The fuzzing campaign of issue 15 (item 9): ``--cases`` seeded mutants of the tiny demo's inputs fed to
``tomoguide inspect``, ``new``, ``status`` and the reading steps, in-process, with a timeout per case.

The engine is the CI test's (``tests/test_fuzz.py``: mutations, commands, oracles); this script makes the seed
(the tiny preset simulated and run through the steps, as the ``tiny_project_root`` test fixture does), runs the
campaign and writes ``bench/results/fuzz.json``: counts per verdict (ok, refused, refused_workflow, traceback,
hang, bad_exit, bad_message, silent_wrong), per target file and per mutation kind, failures grouped by message.

    .venv/bin/python bench/fuzz.py --cases 5000            # 7-15 min on 2 cores (0.08-0.18 s per case)
    .venv/bin/python bench/fuzz.py --cases 300 --seed 7    # another draw
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("TOMOGUIDE_DEVICE", "cpu")


def make_seed(root: Path) -> Path:
    """ROOT/data (the tiny preset's session) and ROOT/project (run through the steps), as the test fixture."""
    from tomoguide import synth
    from tomoguide.cli import run_steps
    from tomoguide.demo import demo_params
    from tomoguide.project import Project

    if (root / "project" / "project.json").exists():
        return root
    root.mkdir(parents=True, exist_ok=True)
    synth.generate(root / "sim", synth.PRESETS["tiny"])
    shutil.copytree(root / "sim" / "data", root / "data")
    Project.create(root / "project", params=demo_params(root / "data", synth.PRESETS["tiny"])).close()
    run_steps(root / "project", quiet=True)
    return root


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=15, help="draw of mutants (reproducible)")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds per command before it counts as a hang")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "fuzz.json")
    args = ap.parse_args(argv)

    work = args.work or Path(tempfile.mkdtemp(prefix="tomoguide-fuzz-"))
    os.environ.setdefault("TOMOGUIDE_CONFIG_DIR", str(work / "config"))
    import test_fuzz as fz  # the engine (after the environment is set)

    t0 = time.perf_counter()
    seed_root = make_seed(work / "seed")
    shared = REPO.parent / "shared" / "data"
    seed = fz.prepare_seed(seed_root, shared if shared.is_dir() else None)
    t_seed = time.perf_counter() - t0
    base = fz.baseline(seed, work / "cases")
    bad = [(k, r.command, r.verdict, r.why) for k, rs in base.items() for r in rs if r.verdict != "ok"]
    if bad:
        print("the unmutated inputs do not read cleanly:", bad, file=sys.stderr)
        return 1
    t1 = time.perf_counter()

    def progress(i: int, res: list) -> None:
        if (i + 1) % 250 == 0:
            print(f"  {i + 1}/{args.cases} cases, {time.perf_counter() - t1:.0f} s", file=sys.stderr, flush=True)

    results = fz.campaign(seed, args.cases, seed_value=args.seed, work=work / "cases", timeout_s=args.timeout,
                          on_case=progress)
    dt = time.perf_counter() - t1
    summary = fz.summarise(results, args.cases)
    cases = summary["cases_by_verdict"]
    out = {
        "what": "issue 15 fuzzing campaign: seeded mutants of the tiny demo's inputs (mdoc, movie MRC header and "
                "data, gain, TIFF and EER movies, TIFF gain, STAR files, IMOD/AreTomo/CTFFIND files, project.json, "
                "every record kind) fed to inspect, new + import, status and the steps' pre-flights",
        "seed": args.seed,
        "timeout_s_per_command": args.timeout,
        "targets": {t.name: {"file": t.rel, "kind": t.kind, "commands": list(t.readers)} for t in seed.targets},
        "totals": {
            "cases": args.cases,
            "tracebacks": cases.get("traceback", 0),
            "hangs": cases.get("hang", 0),
            "bad_exits": cases.get("bad_exit", 0),
            "bad_messages": cases.get("bad_message", 0),
            "silent_wrong_readings": cases.get("silent_wrong", 0),
            "refusals": cases.get("refused", 0) + cases.get("refused_workflow", 0),
            "read_fine": cases.get("ok", 0),
        },
        **summary,
        "seconds": {"seed": round(t_seed, 1), "campaign": round(dt, 1), "per_case": round(dt / max(args.cases, 1), 3)},
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1, default=str) + "\n")
    print(json.dumps(out["totals"], indent=1))
    for k in summary["failure_kinds"][:30]:
        print(f"  {k['count']:4d} {k['verdict']:<12} {k['target']:<18} {k['command']:<28} {k['message']}")
    print(f"{args.cases} cases in {dt:.0f} s; written {args.out}")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
