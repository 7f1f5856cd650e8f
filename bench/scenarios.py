"""Any SerialEM session with defaults only (issue 14): the whole workflow on sessions recorded with other conventions.

    python bench/scenarios.py [--out-dir /tmp/scenarios] [--only NAME ...] [--until STEP] [--results bench/results]

For every scenario of :data:`tomoguide.synth.SCENARIOS` (Windows ``Frames/`` layouts, per-movie mdocs, EER and LZW
TIFF movies, gains stored in other orientations, tilt axes anywhere, an mdoc axis several degrees or 180° off,
dark views and tracking jumps, thick ice, crowded and sparse specimens, other pixel sizes, defocus and doses):

1. the session is simulated into ``OUT/NAME`` (skipped when ``OUT/NAME/truth/summary.json`` records the same
   parameters);
2. a project is made exactly as a user would: ``tomoguide new OUT/NAME/project --movies OUT/NAME/data`` — no
   ``--set``, no other parameter;
3. every step runs in wizard order with its defaults. A step that fails is an *intervention needed* (the
   scenario stops there and its message is recorded).

Then every result is measured against the simulator's truth (``OUT/NAME/truth``):
movies and gain found, gain orientation, tilt-axis error (modulo 180°) and tilt direction (the 180° part: hand),
per-view shift RMS at the alignment binning after removing the arbitrary origin, frame-shift RMS, defocus median
error up to ±45°, planted dark/jump views suggested for exclusion, picks recall and precision, the final map's
half-map FSC 0.143 resolution, its FSC against the true map at 0.5 (and over Nyquist) and its hand (correlation
with the true map against its mirror image). Writes ``RESULTS/scenarios.json`` (merged with earlier runs of other
scenarios) and prints one table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from tomoguide import synth, truth
from tomoguide.cli import main as cli_main
from tomoguide.project import PROJECT_FILE, Project
from tomoguide.runner import StepRun, run_to_end
from tomoguide.steps import registry

TARGETS = {"axis_deg": 0.3, "shift_rms_px": 0.5, "defocus_median_A": 50.0, "recall": 0.9, "precision": 0.9,
           "fsc_truth_over_nyquist": 1.5}


def _same_simulation(summary: Path, params: synth.SimParams) -> bool:
    try:
        recorded = json.loads(summary.read_text()).get("params")
    except (OSError, ValueError):
        return False
    return recorded == json.loads(params.model_dump_json())


def _safe(fn: Any, *args: Any, **kw: Any) -> Any:
    try:
        return fn(*args, **kw)
    except Exception as exc:  # a measurement that cannot be made is recorded, not fatal
        return {"error": f"{type(exc).__name__}: {exc}"}


def measure_import(proj: Project, summary: dict[str, Any], truth_dir: Path) -> dict[str, Any]:
    """Series, tilts, gain and its orientation, tilt axis, pixel size and dose found by the import
    (:func:`tomoguide.truth.import_errors`)."""
    return truth.import_errors(proj.output_path("import_movies", "tilt_series"), truth_dir)


def measure_direction(proj: Project, truth_dir: Path) -> dict[str, Any]:
    """Tilt direction of the geometry the reconstruction used: the axis compared with the truth modulo 360°
    (an error near 180° is a mirrored tomogram; :func:`tomoguide.truth.tilt_direction_errors`)."""
    return truth.tilt_direction_errors(proj.output_path("exclude", "series"), truth_dir)


def measure_bad_views(proj: Project, truth_dir: Path) -> dict[str, Any]:
    """Views suggested for exclusion against the planted dark and jump views (angle-order indices), and what was
    excluded (:func:`tomoguide.truth.bad_view_detection`)."""
    return truth.bad_view_detection(proj.output_path("exclude", "series"), truth_dir)


def run_scenario(name: str, params: synth.SimParams, out_dir: Path, until: str | None) -> dict[str, Any]:
    root = out_dir / name
    t0 = time.perf_counter()
    if not _same_simulation(root / "truth" / "summary.json", params):
        synth.generate(root, params)
    t_sim = time.perf_counter() - t0
    project_dir = root / "project"
    if (project_dir / PROJECT_FILE).exists():  # a fresh project every time: defaults only, nothing kept
        import shutil

        shutil.rmtree(project_dir)
    rc = cli_main(["new", str(project_dir), "--movies", str(root / "data")])
    result: dict[str, Any] = {"scenario": name, "note": synth.SCENARIO_NOTES.get(name, ""),
                              "simulation_s": t_sim, "step_s": {}, "failed_step": None, "error": None}
    if rc != 0:
        result.update(failed_step="new", error=f"tomoguide new exited with {rc}")
        return result
    proj = Project.open(project_dir)
    try:
        for sid in registry.ids():
            t = time.perf_counter()
            try:
                status = run_to_end(StepRun(proj, sid)).status
            except Exception as exc:
                status, proj.data.steps[sid].error = "failed", f"{type(exc).__name__}: {exc}"
                traceback.print_exc()
            result["step_s"][sid] = time.perf_counter() - t
            print(f"  {name}: {sid:30s} {status:6s} {result['step_s'][sid]:7.1f} s", flush=True)
            if status != "done":
                result.update(failed_step=sid, error=str(proj.data.steps[sid].error))
                break
            if until and sid == until:
                break
        summary = json.loads((root / "truth" / "summary.json").read_text())
        truth_dir = root / "truth"
        done = {sid for sid in registry.ids() if proj.data.steps[sid].status == "done"}
        m: dict[str, Any] = {}
        if "import_movies" in done:
            m["import"] = _safe(measure_import, proj, summary, truth_dir)
        if "motion_ctf" in done:
            m["frame_shifts"] = _safe(truth.frame_shift_errors, truth_dir, proj.output_path("motion_ctf", "series"))
        if "align" in done:
            m["alignment"] = _safe(truth.alignment_errors, truth_dir, proj.output_path("align", "series"))
        if "ctf_estimate" in done:
            m["defocus"] = _safe(truth.defocus_errors, truth_dir, proj.output_path("ctf_estimate", "series"))
        if "exclude" in done:
            m["direction"] = _safe(measure_direction, proj, truth_dir)
            m["bad_views"] = _safe(measure_bad_views, proj, truth_dir)
        if "pick" in done:
            m["picks"] = _safe(truth.pick_errors, proj.output_path("pick", "particles"), truth_dir)
        if "refine_fine" in done:
            m["final_map"] = _safe(truth.map_errors, proj.output_path("refine_fine", "average"), truth_dir)
        result["measures"] = m
    finally:
        proj.close()
    result["steps_total_s"] = float(sum(result["step_s"].values()))
    return result


def _fmt(v: Any, spec: str = ".2f") -> str:
    return "—" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, spec)


def table_rows(results: dict[str, dict[str, Any]]) -> list[list[str]]:
    rows = [["scenario", "interventions", "axis err °", "hand", "shift RMS px", "frame RMS px", "defocus med Å",
             "bad views (suggested/planted, extra)", "recall", "precision", "FSC 0.143 Å", "FSC truth 0.5 Å (×Nyq)",
             "map hand"]]
    for name, r in results.items():
        m = r.get("measures", {})
        al = m.get("alignment", {})
        axis = al.get("max_axis_error_deg") if "error" not in al else None
        shift = al.get("max_shift_rms_px") if "error" not in al else None
        dirs = m.get("direction", {})
        hand = None if not dirs or "error" in dirs else all(v["direction_right"] for v in dirs.values())
        fs = m.get("frame_shifts", {}).get("rms_offset_removed_px")
        dfm = m.get("defocus", {}).get("median_abs_error_A")
        bv = m.get("bad_views", {})
        if bv and "error" not in bv:
            planted = sum(len(v["planted"]) for v in bv.values())
            hit = sum(len(v["planted_suggested"]) for v in bv.values())
            extra = sum(len(v["others_suggested"]) for v in bv.values())
            bad = f"{hit}/{planted}, +{extra}"
        else:
            bad = "—"
        pk = m.get("picks", {})
        recall = precision = None
        if pk and "error" not in pk:
            n_true = sum(v["n_true"] for v in pk.values())
            n_pick = sum(v["n_picked"] for v in pk.values())
            found = sum(v["recall"] * v["n_true"] for v in pk.values())
            false = sum(v["false_fraction"] * v["n_picked"] for v in pk.values())
            recall = found / n_true if n_true else None
            precision = 1 - false / n_pick if n_pick else None
        fm = m.get("final_map", {})
        res = fm.get("resolution_A")
        f05 = fm.get("fsc_vs_truth_0.5_A")
        ratio = fm.get("fsc_vs_truth_0.5_over_nyquist")
        map_hand = None if "cc_truth" not in fm else fm["cc_truth"] > fm["cc_truth_mirrored"]
        dips = fm.get("fsc_vs_truth_single_shell_dips_A") or []
        past_dip = "" if not dips else (f"; {_fmt(fm.get('fsc_vs_truth_0.5_sustained_A'))} past a one-shell dip at "
                                         + ", ".join(f"{d:.0f}" for d in dips) + " Å")
        interventions = "0" if r.get("failed_step") is None else f"≥1 ({r['failed_step']})"
        rows.append([name, interventions, _fmt(axis), {True: "right", False: "WRONG", None: "—"}[hand],
                     _fmt(shift), _fmt(fs), _fmt(dfm, ".0f"), bad, _fmt(recall), _fmt(precision), _fmt(res),
                     f"{_fmt(f05)} ({_fmt(ratio)}){past_dip}", {True: "right", False: "WRONG", None: "—"}[map_hand]])
    return rows


def print_table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for k, r in enumerate(rows):
        print(" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
        if k == 0:
            print("-+-".join("-" * w for w in widths))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", type=Path, default=Path("/tmp/scenarios"))
    ap.add_argument("--only", nargs="*", default=None, help="scenario names (default: all)")
    ap.add_argument("--until", default=None, help="stop every scenario after this step")
    ap.add_argument("--results", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args()
    names = args.only or list(synth.SCENARIOS)
    unknown = [n for n in names if n not in synth.SCENARIOS]
    if unknown:
        ap.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(synth.SCENARIOS)}")
    path = args.results / "scenarios.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    results: dict[str, Any] = dict(previous.get("scenarios", {}))
    load0 = os.getloadavg()
    args.results.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {}
    for name in names:  # the results file is rewritten after every scenario: an interrupted run keeps its figures
        print(f"== {name}: {synth.SCENARIO_NOTES.get(name, '')}", flush=True)
        results[name] = run_scenario(name, synth.SCENARIOS[name], args.out_dir, args.until)
        results[name]["load_average_after"] = os.getloadavg()
        results[name]["until"] = args.until
        out = {"machine": platform.platform(), "cpus": os.cpu_count(), "load_average_before": load0,
               "targets": TARGETS, "scenarios": {n: results[n] for n in synth.SCENARIOS if n in results}}
        path.write_text(json.dumps(out, indent=1, default=str))
    rows = table_rows(out["scenarios"])
    print_table(rows)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
