"""Benchmark of automatic picking (tomoguide.compute.pick) on a processed demo project (issue 7, item 1).

Usage::

    python bench/pick.py [--project /tmp/demo_small/project] [--truth /tmp/demo_small/truth]
                         [--template shell|reference] [--angular-step 30] [--k 7.5] [--out bench/results]

For every tomogram of the project's ``reconstruct`` step: template matching by fast local NCC with
``--template shell`` (a spherical shell, apoferritin radii 62 / 40 Å; no rotations) or ``--template reference``
(``truth/apoferritin.mrc`` rescaled to the tomogram voxel, an O-symmetric asymmetric-unit sampling every
``--angular-step`` degrees, missing wedge of the series' tilt range), peak picking (minimum distance 96 Å, 1 voxel
border), the threshold ``median + k·1.4826·MAD`` of the score volume, then the comparison with the truth: the
picked set is registered to ``truth/particles.star`` by one global translation (the tomogram's origin comes from
the alignment and is arbitrary to a few voxels; the translation is reported) and matched one-to-one within 30 Å
(half the apoferritin radius). Reports time, recall, false fraction, threshold, translation, RMS distance, and the
lowest true / highest false peak score (the margin around the threshold).

Writes ``OUT/pick_<project name>_<template>.json`` and prints a summary. Issue 7 asks recall ≥ 95 % with ≤ 5 %
false picks on the small preset.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import mrcfile
import numpy as np
import starfile

from tomoguide.compute import pick
from tomoguide.project import Project
from tomoguide.steps.records import SeriesSet

APOFERRITIN_OUTER_A = 62.0
APOFERRITIN_INNER_A = 40.0
MATCH_DISTANCE_A = 30.0


def bench_series(tomo: np.ndarray, voxel_A: float, true_A: np.ndarray, *, template: str, ref_map: np.ndarray | None,
                 ref_voxel_A: float, tilt_range_deg: tuple[float, float], angular_step_deg: float, k: float
                 ) -> dict[str, Any]:
    box = int(np.ceil(190.0 / voxel_A))
    box += box % 2
    mask_r = 84.0 / voxel_A
    t0 = time.perf_counter()
    if template == "shell":
        tmpl = pick.shell_template(APOFERRITIN_OUTER_A, APOFERRITIN_INNER_A, voxel_A, box)
        res = pick.template_match(tomo, tmpl, voxel_A=voxel_A, mask_radius_px=mask_r)
    else:
        assert ref_map is not None
        tmpl = pick.reference_template(ref_map, ref_voxel_A, voxel_A, box)
        res = pick.template_match(tomo, tmpl, voxel_A=voxel_A, mask_radius_px=mask_r, symmetry="O",
                                  angular_step_deg=angular_step_deg, tilt_range_deg=tilt_range_deg)
    t_match = time.perf_counter() - t0
    t1 = time.perf_counter()
    threshold = pick.suggest_threshold(res.score, method="mad", k=k)
    xyz_all, sc_all = pick.pick_peaks(res.score, min_distance_px=96.0 / voxel_A, exclude_border_px=1)
    t_peaks = time.perf_counter() - t1
    sel = sc_all >= threshold
    centre = (np.array(tomo.shape[::-1]) - 1) / 2.0
    picked_A = (xyz_all - centre) * voxel_A
    shift = pick.register_translation(picked_A[sel], true_A, max_shift=10 * voxel_A, tolerance=MATCH_DISTANCE_A)
    m = pick.match_to_truth(picked_A[sel] + shift, true_A, max_distance=MATCH_DISTANCE_A)
    # margin: scores of all peaks (no threshold) matched / not matched to the truth
    m_all = pick.match_to_truth(picked_A + shift, true_A, max_distance=MATCH_DISTANCE_A)
    is_true = np.zeros(len(sc_all), bool)
    is_true[m_all["pairs"][:, 0]] = True
    return {
        "tomogram_shape_zyx": list(tomo.shape), "voxel_A": voxel_A, "template": template, "box_px": box,
        "mask_radius_px": mask_r, "n_angles": int(len(res.angles_deg)),
        "time_match_s": round(t_match, 3), "time_peaks_s": round(t_peaks, 3),
        "threshold": threshold, "threshold_rule": f"median + {k} * 1.4826 * MAD of the score volume",
        "n_true": m["n_true"], "n_picked": m["n_picked"], "n_matched": m["n_matched"],
        "recall": m["recall"], "false_fraction": m["false_fraction"], "rms_distance_A": m["rms_distance"],
        "registration_shift_A": [round(float(v), 2) for v in shift],
        "registration_shift_px": [round(float(v) / voxel_A, 2) for v in shift],
        "lowest_true_peak_score": float(sc_all[is_true].min()) if is_true.any() else None,
        "highest_false_peak_score": float(sc_all[~is_true].max()) if (~is_true).any() else None,
        "recall_without_threshold": m_all["recall"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--project", type=Path, default=Path("/tmp/demo_small/project"))
    ap.add_argument("--truth", type=Path, default=None, help="default: PROJECT/../truth")
    ap.add_argument("--template", choices=("shell", "reference"), default="shell")
    ap.add_argument("--angular-step", type=float, default=30.0)
    ap.add_argument("--k", type=float, default=7.5)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    a = ap.parse_args()
    truth = a.truth or a.project.parent / "truth"
    sset, base = SeriesSet.load(Project.open(a.project, readonly=True).output_path("reconstruct", "tomograms"))
    parts = starfile.read(truth / "particles.star")["particles"]
    ref_map, ref_voxel = None, 1.0
    if a.template == "reference":
        with mrcfile.open(truth / "apoferritin.mrc") as mf:
            ref_map, ref_voxel = mf.data.astype(np.float32), float(mf.voxel_size.x)
    load0 = os.getloadavg()
    out: dict[str, Any] = {"project": str(a.project), "truth": str(truth), "machine": platform.processor() or
                           platform.machine(), "cpu_count": os.cpu_count(), "loadavg_before": load0, "series": {}}
    for s in sset.series:
        tomo = mrcfile.read(s.path("tomogram", base)).astype(np.float32)
        g = s.geometry
        tilts = np.asarray(g.tilt_angles_deg)[~np.asarray(g.excluded, bool)] if len(g.excluded) else \
            np.asarray(g.tilt_angles_deg)
        sub = parts[parts["rlnTomoName"] == s.name]
        true_A = sub[[f"rlnCenteredCoordinate{c}Angst" for c in "XYZ"]].to_numpy(np.float64)
        r = bench_series(tomo, float(g.pixel_size_binned_A), true_A, template=a.template, ref_map=ref_map,
                         ref_voxel_A=ref_voxel, tilt_range_deg=(float(tilts.min()), float(tilts.max())),
                         angular_step_deg=a.angular_step, k=a.k)
        out["series"][s.name] = r
        print(f"{s.name}: {a.template} {r['n_angles']} rotation(s), match {r['time_match_s']:.2f} s, peaks "
              f"{r['time_peaks_s']:.2f} s, threshold {r['threshold']:.3f}, picked {r['n_picked']}, recall "
              f"{r['recall']:.3f}, false {r['false_fraction']:.3f}, rms {r['rms_distance_A']:.1f} Å, shift "
              f"{r['registration_shift_A']} Å; true min {r['lowest_true_peak_score']:.3f}, false max "
              f"{r['highest_false_peak_score']:.3f}")
    out["loadavg_after"] = os.getloadavg()
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / f"pick_{a.project.parent.name}_{a.template}.json"
    path.write_text(json.dumps(out, indent=1, default=float))
    print("wrote", path)


if __name__ == "__main__":
    main()
