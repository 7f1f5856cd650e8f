"""The whole demo, movies to the average, timed step by step, and the final map measured against the truth (issue 7).

    python bench/demo_workflow.py [--out-dir /tmp/demo_bench] [--preset small] [--from STEP] [--results bench/results]

Runs what ``tomoguide demo --preset small --no-gui`` runs (simulation, then every step in wizard order with the
demo's parameters) and records the wall time of the simulation and of every step. ``--from STEP`` reuses an
existing project in ``--out-dir`` and re-runs from that step on (the earlier steps' times are read from the project).

Measured against the simulator's truth (``OUT/truth``):
* picking: recall and false-pick fraction (matched within half a particle radius after the alignment origin's shift);
* for every averaging step's map: resolution (half-map FSC 0.143) and its ratio to Nyquist; FSC of the map
  ((half1 + half2) / 2, unfiltered) against truth/apoferritin.mrc at the same voxel size (soft spherical mask,
  75 Å radius) and its 0.5 / 0.143 crossings; correlation with the truth and with its mirror image (hand);
* orientations: angle between each refined rotation and the true one, minimised over the 24 operators of O,
  median and 90th percentile, and the RMS error of the particle centres (Å).
Writes ``RESULTS/demo_workflow_<preset>.json`` and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime
from pathlib import Path

import mrcfile
import numpy as np

from tomoguide.compute import fsc as F
from tomoguide.compute.euler import euler_to_matrix, rotation_angle_deg
from tomoguide.compute.io.star import read_particles_star
from tomoguide.compute.pick import match_to_truth, register_translation
from tomoguide.compute.symmetry import symmetry_matrices
from tomoguide.demo import prepare_demo
from tomoguide.project import Project
from tomoguide.runner import StepRun, run_to_end
from tomoguide.steps import registry
from tomoguide.steps.average_records import AverageRecord
from tomoguide.truth import true_reference_map

XYZ = ["rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst", "rlnCenteredCoordinateZAngst"]
ORIGIN = ["rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst"]
ANG = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]


def _cc(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    a = (a - a.mean()) * mask
    b = (b - b.mean()) * mask
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def _seconds(step: dict) -> float | None:
    if not step.get("started") or not step.get("finished"):
        return None
    return (datetime.fromisoformat(step["finished"]) - datetime.fromisoformat(step["started"])).total_seconds()


def measure_map(folder: Path, truth_dir: Path) -> dict:
    """Resolution, FSC against the truth and hand of one averaging step's output."""
    rec, base = AverageRecord.load(folder)
    out: dict = {"voxel_A": rec.voxel_A, "box_px": rec.box_px, "nyquist_A": 2 * rec.voxel_A,
                 "resolution_A": rec.resolution_A}
    if rec.resolution_A:
        out["resolution_over_nyquist"] = rec.resolution_A / (2 * rec.voxel_A)
    if rec.half1 and rec.half2:
        with mrcfile.open(base / rec.half1) as a, mrcfile.open(base / rec.half2) as b:
            vol = 0.5 * (np.asarray(a.data, np.float64) + np.asarray(b.data, np.float64))
    else:
        with mrcfile.open(base / rec.map) as a:
            vol = np.asarray(a.data, np.float64)
    ref = true_reference_map(truth_dir, rec.voxel_A, rec.box_px)
    mask = F.soft_sphere_mask(rec.box_px, 75.0 / rec.voxel_A, 3.0)
    freqs, curve = F.fsc(vol, ref, voxel_A=rec.voxel_A, mask=mask)
    out["fsc_vs_truth_0.5_A"] = F.resolution_at(curve, freqs, 0.5)
    # the same ignoring single shells that dip below 0.5 between neighbours above it (e.g. at a CTF zero that all
    # particles share, where a shell holds no information): the resolution where the curve falls for good
    c = np.asarray(curve, dtype=np.float64).copy()
    dips = [i for i in range(2, c.size - 1) if c[i] < 0.5 <= min(c[i - 1], c[i + 1])]
    for i in dips:
        c[i] = 0.5 * (c[i - 1] + c[i + 1])
    out["fsc_vs_truth_0.5_sustained_A"] = F.resolution_at(c, freqs, 0.5)
    out["fsc_vs_truth_single_shell_dips_A"] = [float(1.0 / np.asarray(freqs)[i]) for i in dips]
    out["fsc_vs_truth_0.143_A"] = F.resolution_at(curve, freqs, 0.143)
    out["fsc_vs_truth_0.5_over_nyquist"] = out["fsc_vs_truth_0.5_A"] / (2 * rec.voxel_A)
    out["cc_truth"] = _cc(vol, ref, mask)
    out["cc_truth_mirrored"] = _cc(vol, ref[::-1], mask)
    out["fsc_vs_truth"] = {"freq_per_A": np.asarray(freqs).tolist(), "fsc": np.asarray(curve).tolist()}
    # orientations and centres against the truth
    parts = read_particles_star(base / rec.particles).particles
    truth = read_particles_star(truth_dir / "particles.star").particles
    p = parts[XYZ].to_numpy(float)
    if all(c in parts.columns for c in ORIGIN):
        p = p - parts[ORIGIN].to_numpy(float)
    errs_ang, errs_pos = [], []
    sym = symmetry_matrices("O")
    for name in sorted(set(parts["rlnTomoName"])):
        sel = (parts["rlnTomoName"] == name).to_numpy()
        tsel = (truth["rlnTomoName"] == name).to_numpy()
        pp, tt = p[sel], truth.loc[tsel, XYZ].to_numpy(float)
        shift = register_translation(pp, tt, max_shift=150.0, tolerance=30.0)
        d = np.linalg.norm((pp + shift)[:, None] - tt[None], axis=-1)
        nn = d.argmin(axis=1)
        ok = d[np.arange(len(pp)), nn] < 30.0
        r = euler_to_matrix(parts.loc[sel, ANG].to_numpy(float))[ok]
        rt = euler_to_matrix(truth.loc[tsel, ANG].to_numpy(float))[nn[ok]]
        ang = np.min([rotation_angle_deg(r @ s, rt) for s in sym], axis=0)
        errs_ang.append(ang)
        # centre error after removing the mean offset of this tomogram (the alignment's arbitrary origin)
        dp = (pp + shift)[ok] - tt[nn[ok]]
        errs_pos.append(dp - dp.mean(axis=0))
    a = np.concatenate(errs_ang)
    dpos = np.concatenate(errs_pos)
    out["angle_error_deg"] = {"median": float(np.median(a)), "p90": float(np.percentile(a, 90)),
                              "mean": float(a.mean()), "n": int(a.size), "within_5deg": float(np.mean(a < 5.0))}
    out["centre_error_rms_A"] = float(np.sqrt((dpos**2).sum(axis=1).mean()))
    return out


def measure_picks(proj: Project, truth_dir: Path) -> dict:
    ours = read_particles_star(proj.output_path("pick", "particles")).particles
    truth = read_particles_star(truth_dir / "particles.star").particles
    res = {}
    for name in sorted(set(truth["rlnTomoName"])):
        p = ours.loc[ours["rlnTomoName"] == name, XYZ].to_numpy(float)
        t = truth.loc[truth["rlnTomoName"] == name, XYZ].to_numpy(float)
        shift = register_translation(p, t, max_shift=150.0, tolerance=30.0)
        m = match_to_truth(p + shift, t, max_distance=30.0)
        res[name] = {"recall": m["recall"], "false_fraction": m["false_fraction"], "n_picked": int(len(p)),
                     "n_true": int(len(t))}
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", type=Path, default=Path("/tmp/demo_bench"))
    ap.add_argument("--preset", default="small")
    ap.add_argument("--from", dest="from_step", default=None)
    ap.add_argument("--results", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args()
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    project_dir = prepare_demo(args.out_dir, preset=args.preset)
    t_sim = time.perf_counter() - t0
    proj = Project.open(project_dir)
    ids = registry.ids()
    start = ids.index(args.from_step) if args.from_step else 0
    times: dict[str, float] = {}
    for sid in ids:
        if ids.index(sid) < start and proj.data.steps[sid].status == "done":
            continue
        t = time.perf_counter()
        status = run_to_end(StepRun(proj, sid)).status
        times[sid] = time.perf_counter() - t
        print(f"{sid:32s} {status:6s} {times[sid]:7.1f} s", flush=True)
        if status != "done":
            print(proj.data.steps[sid].error, file=sys.stderr)
            return 1
    for sid in ids:
        if sid not in times:  # not re-run here: the time the project recorded
            rec = _seconds(proj.data.steps[sid].model_dump())
            times[sid] = float("nan") if rec is None else rec
    truth_dir = args.out_dir / "truth"
    result = {
        "preset": args.preset, "machine": platform.platform(), "cpus": os.cpu_count(),
        "load_average_before": load0, "load_average_after": os.getloadavg(),
        "simulation_s": t_sim if not args.from_step else None,
        "step_s": times, "steps_total_s": float(np.nansum(list(times.values()))),
        "total_s": (t_sim if not args.from_step else 0.0) + float(np.nansum(list(times.values()))),
        "picking": measure_picks(proj, truth_dir),
        "maps": {sid: measure_map(proj.output_path(sid, "average"), truth_dir)
                 for sid in ("initial_model", "refine", "reconstruct_particle", "refine_fine")},
    }
    proj.close()
    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / f"demo_workflow_{args.preset}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"simulation {t_sim:.0f} s; steps {result['steps_total_s']:.0f} s; total {result['total_s']:.0f} s")
    for sid, m in result["maps"].items():
        print(f"{sid:22s} res {m['resolution_A'] or float('nan'):6.2f} Å (Nyq {m['nyquist_A']:.1f}); vs truth 0.5 at "
              f"{m['fsc_vs_truth_0.5_A']:.2f} Å; cc {m['cc_truth']:.3f} / mirrored {m['cc_truth_mirrored']:.3f}; "
              f"angles median {m['angle_error_deg']['median']:.2f}° p90 {m['angle_error_deg']['p90']:.2f}°")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
