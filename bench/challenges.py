"""Every challenge run through with the defaults, and scored (issue 16): is the planted problem visible in the score?

    python bench/challenges.py [--size small|tiny] [--out-dir /tmp/challenges] [--only NAME ...] [--results DIR]
                               [--report FILE]

For every challenge of :data:`tomoguide.challenges.CHALLENGES`:

1. the data set is simulated into ``OUT/NAME`` with its answer key (skipped when ``OUT/NAME/truth/summary.json``
   records the same parameters);
2. a project is made as a trainee would: ``tomoguide new OUT/NAME/project --movies OUT/NAME/data``, nothing set;
3. every step runs in wizard order with its defaults (a step that fails stops the challenge: recorded);
4. ``tomoguide score`` (:func:`tomoguide.score.score_project`) grades every step; the answer-key rows (the planted
   problem: found / handled or missed) and the grades of the challenge's step are recorded.

Writes ``RESULTS/challenges_<size>.json``, prints one table and, with ``--report``, the class report of all the
challenge projects (one HTML file).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from tomoguide import challenges, score
from tomoguide.cli import main as cli_main
from tomoguide.project import PROJECT_FILE, Project
from tomoguide.runner import StepRun, run_to_end
from tomoguide.steps import registry


def _same_simulation(summary: Path, params: Any) -> bool:
    try:
        recorded = json.loads(summary.read_text()).get("params")
    except (OSError, ValueError):
        return False
    return recorded == json.loads(params.model_dump_json())


def run_challenge(name: str, size: str, out_dir: Path) -> tuple[dict[str, Any], Any]:
    root = out_dir / name
    params = challenges.challenge_params(name, size)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    if not _same_simulation(root / "truth" / "summary.json", params):
        challenges.make_challenge(name, root, size=size)  # type: ignore[arg-type]
    else:
        challenges.write_answer_key(name, root / "truth", size)  # type: ignore[arg-type]
    t_sim = time.perf_counter() - t0
    project_dir = root / "project"
    if (project_dir / PROJECT_FILE).exists():
        shutil.rmtree(project_dir)
    result: dict[str, Any] = {"challenge": name, "size": size, "simulation_s": t_sim, "step_s": {},
                              "failed_step": None, "error": None}
    if cli_main(["new", str(project_dir), "--movies", str(root / "data")]) != 0:
        result.update(failed_step="new", error="tomoguide new failed")
        return result, None
    proj = Project.open(project_dir)
    try:
        for sid in registry.ids():
            t = time.perf_counter()
            try:
                status = run_to_end(StepRun(proj, sid)).status
            except Exception as exc:
                status, proj.data.steps[sid].error = "failed", f"{type(exc).__name__}: {exc}"
                traceback.print_exc()
            result["step_s"][sid] = round(time.perf_counter() - t, 2)
            print(f"  {name}: {sid:30s} {status:6s} {result['step_s'][sid]:7.1f} s", flush=True)
            if status != "done":
                result.update(failed_step=sid, error=str(proj.data.steps[sid].error))
                break
        t = time.perf_counter()
        truth_dir, how = score.locate_truth(proj)
        score.record_truth(proj, truth_dir)
        sc = score.score_project(proj, truth_dir, found=how)
        result["score_s"] = round(time.perf_counter() - t, 1)
    finally:
        proj.close()
    key = challenges.read_answer_key(truth_dir) or {}
    steps = {it["step"] for it in key.get("items", [])}
    result["answers"] = [m.model_dump() for s in sc.steps for m in s.measures if m.answer_key]
    result["challenge_steps"] = {s.step: {"grade": s.grade, "measures": [
        {"label": m.label, "grade": m.grade, "text": m.text} for m in s.measures]} for s in sc.steps if s.step in steps}
    result["step_grades"] = {s.step: s.grade for s in sc.steps}
    result["counts"] = sc.counts()
    return result, sc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["small", "tiny"], default="small")
    ap.add_argument("--out-dir", type=Path, default=Path("/tmp/challenges"))
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--results", type=Path, default=Path(__file__).resolve().parent / "results")
    ap.add_argument("--report", type=Path, default=None, help="also write the class report of all challenges")
    args = ap.parse_args()
    names = args.only or list(challenges.CHALLENGES)
    unknown = [n for n in names if n not in challenges.CHALLENGES]
    if unknown:
        ap.error(f"unknown challenge(s) {', '.join(unknown)}; known: {', '.join(challenges.CHALLENGES)}")
    out_dir = args.out_dir / args.size
    path = args.results / f"challenges_{args.size}.json"
    previous = json.loads(path.read_text()).get("challenges", {}) if path.exists() else {}
    results = dict(previous)
    scores = []
    args.results.mkdir(parents=True, exist_ok=True)
    for name in names:
        print(f"== {name}: {challenges.CHALLENGES[name].title}", flush=True)
        results[name], sc = run_challenge(name, args.size, out_dir)
        if sc is not None:
            sc.name = name
            scores.append(sc)
        out = {"machine": platform.platform(), "cpus": os.cpu_count(), "size": args.size,
               "challenges": {n: results[n] for n in challenges.CHALLENGES if n in results}}
        path.write_text(json.dumps(out, indent=1, default=str))
    print()
    for name in names:
        r = results[name]
        answers = "; ".join(f"{a['grade']}: {a['text']}" for a in r.get("answers", []))
        failed = f" (stopped at {r['failed_step']}: {r['error']})" if r.get("failed_step") else ""
        print(f"{name:18s} {answers}{failed}")
        c = r.get("counts", {})
        print(f"{'':18s} figures: {c.get('good')} good, {c.get('acceptable')} acceptable, {c.get('poor')} poor; "
              f"poor steps: {', '.join(s for s, g in r.get('step_grades', {}).items() if g == 'poor') or 'none'}")
    if args.report and scores:
        from tomoguide.report import write_report

        write_report(scores, args.report, title=f"tomoguide challenges ({args.size})")
        print(f"wrote {args.report}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
