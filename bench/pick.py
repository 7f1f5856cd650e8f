"""Benchmark of automatic picking (the ``pick`` step's template matching) on a processed project, against the
simulator's truth (issue 7 item 1, issue 14 item 5).

Usage::

    python bench/pick.py [--project /tmp/demo_small/project] [--truth DIR] [--template shell|reference]
                         [--set PARAM=VALUE ...] [--noise 0 3 5] [--name NAME] [--out bench/results]

For every tomogram of the project's ``reconstruct`` step, the step's own algorithm
(:func:`tomoguide.steps.pick.pick_tomogram` with the step's default parameters, changed by ``--set``; for
``--template reference`` the map is ``truth/apoferritin.mrc``): template matching, the specimen slab, peaks inside
it, the noise-model threshold. For comparison, the rule used before issue 14 on the same score volume: no missing
wedge on the template, every peak of the whole tomogram, threshold ``median + 7.5 · 1.4826 · MAD`` of the score
volume. ``--noise`` adds white Gaussian noise of that many times the tomogram's SD (a stress test of the threshold:
lower SNR than any simulated preset).

Comparison with the truth: the picks are registered to ``truth/particles.star`` by one global translation (the
tomogram's origin comes from the alignment and is arbitrary to a few voxels; found once per tomogram from its
highest peaks without added noise) and matched one-to-one within 30 Å (half the apoferritin radius). Reports recall,
precision, the threshold and how it was chosen, the noise model, the highest false and lowest true peak score, the
best F1 any threshold could reach on these peaks (an oracle), and the specimen slab against the particles' true
heights.

Writes ``OUT/pick_<name>_<template>.json`` (name: ``--name`` or the project's parent folder) and prints a table.
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
from tomoguide.steps.pick import PickParams, pick_tomogram, tilt_range_deg
from tomoguide.steps.records import SeriesSet

MATCH_DISTANCE_A = 30.0
OLD_K = 7.5


def _score(picked_A: np.ndarray, true_A: np.ndarray, shift: np.ndarray) -> dict[str, Any]:
    m = pick.match_to_truth(picked_A + shift, true_A, max_distance=MATCH_DISTANCE_A)
    return {"n_picked": m["n_picked"], "n_matched": m["n_matched"], "recall": m["recall"],
            "precision": 1.0 - m["false_fraction"] if m["n_picked"] else float("nan"),
            "rms_distance_A": m["rms_distance"]}


def _oracle(scores: np.ndarray, is_true: np.ndarray, n_true: int) -> dict[str, float]:
    """The best F1 over all thresholds on these peaks (descending scores)."""
    if len(scores) == 0:
        return {"f1": 0.0, "threshold": float("nan"), "recall": 0.0, "precision": float("nan")}
    order = np.argsort(-scores)
    lab = is_true[order]
    tp, fp = np.cumsum(lab), np.cumsum(~lab)
    rec, prec = tp / n_true, tp / (tp + fp)
    f1 = 2 * rec * prec / np.maximum(rec + prec, 1e-12)
    k = int(np.argmax(f1))
    return {"f1": float(f1[k]), "threshold": float(scores[order][k]), "recall": float(rec[k]),
            "precision": float(prec[k])}


def bench_series(tomo: np.ndarray, voxel_A: float, true_A: np.ndarray, params: PickParams,
                 tilt_range: tuple[float, float], shift: np.ndarray | None = None
                 ) -> tuple[dict[str, Any], np.ndarray]:
    """Both rules on one tomogram; ``shift`` (Å) registers picks to the truth (found here when None)."""
    centre = (np.array(tomo.shape[::-1]) - 1) / 2.0
    t0 = time.perf_counter()
    res = pick_tomogram(tomo, voxel_A, params, tilt_range)
    t_new = time.perf_counter() - t0
    peaks_A = (res.xyz_px - centre) * voxel_A
    if shift is None:
        shift = pick.register_translation(peaks_A[: len(true_A)], true_A, max_shift=10 * voxel_A,
                                          tolerance=MATCH_DISTANCE_A)
    new = _score(peaks_A[res.keep], true_A, shift)
    m_all = pick.match_to_truth(peaks_A + shift, true_A, max_distance=MATCH_DISTANCE_A)
    is_true = np.zeros(len(res.scores), bool)
    is_true[m_all["pairs"][:, 0]] = True
    # the rule before issue 14: whole tomogram, no wedge, median + k MAD of the score volume
    r_px = params.outer_radius_A / voxel_A
    box = int(2 * np.ceil(1.35 * r_px)) // 2 * 2 + 2
    t1 = time.perf_counter()
    old_res = pick.template_match(tomo, pick.shell_template(params.outer_radius_A, params.inner_radius_A, voxel_A,
                                                            box), voxel_A=voxel_A, mask_radius_px=1.35 * r_px)
    old_thr = pick.suggest_threshold(old_res.score, method="mad", k=OLD_K)
    old_xyz, _ = pick.pick_peaks(old_res.score, min_distance_px=params.min_distance_A / voxel_A, threshold=old_thr,
                                 exclude_border_px=1)
    t_old = time.perf_counter() - t1
    old = _score((old_xyz - centre) * voxel_A, true_A, shift)
    true_h = None
    if res.slab is not None and res.slab.found:  # the true particles' heights above the slab's centre plane
        px = (true_A - shift) / voxel_A + centre
        plane = res.slab.centre_z_px + res.slab.slope[0] * (px[:, 0] - centre[0]) + res.slab.slope[1] * (
            px[:, 1] - centre[1])
        true_h = px[:, 2] - plane
    c = res.choice
    return {
        "tomogram_shape_zyx": list(tomo.shape), "voxel_A": voxel_A, "n_true": len(true_A),
        "registration_shift_A": [round(float(v), 2) for v in shift],
        "new": {**new, "threshold": res.threshold, "how": res.metrics()["threshold_how"], "time_s": round(t_new, 2),
                "n_peaks": int(len(res.scores)), "highest": res.highest,
                "noise_mean": c.noise.mean if c else None, "noise_sigma": c.noise.sigma if c else None,
                "noise_threshold": c.noise.threshold if c else None, "standing_out": c.standing_out if c else None,
                "sanity_bound": res.sanity_bound(),
                "lowest_true_peak": float(res.scores[is_true].min()) if is_true.any() else None,
                "highest_false_peak": float(res.scores[~is_true].max()) if (~is_true).any() else None,
                "recall_without_threshold": m_all["recall"], "oracle": _oracle(res.scores, is_true, len(true_A)),
                "slab": res.slab.note if res.slab is not None else "whole tomogram",
                "slab_range_px": [res.slab.bottom_px, res.slab.top_px] if res.slab is not None else None,
                "true_heights_px": [float(true_h.min()), float(true_h.max())] if true_h is not None else None},
        "old": {**old, "threshold": old_thr, "rule": f"median + {OLD_K} * 1.4826 * MAD of the score volume",
                "time_s": round(t_old, 2)},
    }, shift


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--project", type=Path, default=Path("/tmp/demo_small/project"))
    ap.add_argument("--truth", type=Path, default=None, help="default: PROJECT/../truth")
    ap.add_argument("--template", choices=("shell", "reference"), default="shell")
    ap.add_argument("--set", action="append", default=[], metavar="PARAM=VALUE",
                    help="a pick-step parameter (JSON value), e.g. --set lowpass_A=30")
    ap.add_argument("--noise", type=float, nargs="*", default=[0.0])
    ap.add_argument("--name", default=None)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    a = ap.parse_args()
    truth = a.truth or a.project.parent / "truth"
    values: dict[str, Any] = {"template": a.template}
    if a.template == "reference":
        values["reference_map"] = str(truth / "apoferritin.mrc")
    for item in a.set:
        k, _, v = item.partition("=")
        try:
            values[k] = json.loads(v)
        except json.JSONDecodeError:
            values[k] = v
    params = PickParams.model_validate(values)
    sset, base = SeriesSet.load(Project.open(a.project, readonly=True).output_path("reconstruct", "tomograms"))
    parts = starfile.read(truth / "particles.star")["particles"]
    name = a.name or a.project.parent.name
    out: dict[str, Any] = {"project": str(a.project), "truth": str(truth), "params": params.model_dump(mode="json"),
                           "machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                           "loadavg_before": os.getloadavg(), "series": {}}
    print(f"{'series':8s} {'noise':>5s} | {'new: picked':>11s} {'recall':>6s} {'prec':>6s} {'thr':>6s} {'how':>9s} "
          f"| {'old: picked':>11s} {'recall':>6s} {'prec':>6s} {'thr':>6s} | {'oracle F1':>9s} {'highest':>7s}")
    for s in sset.series:
        tomo0 = mrcfile.read(s.path("tomogram", base)).astype(np.float32)
        sub = parts[parts["rlnTomoName"] == s.name]
        true_A = sub[[f"rlnCenteredCoordinate{c}Angst" for c in "XYZ"]].to_numpy(np.float64)
        voxel = float(s.geometry.pixel_size_binned_A)
        shift = None
        for noise in a.noise:
            rng = np.random.default_rng(1)
            tomo = tomo0 + (noise * tomo0.std() * rng.normal(size=tomo0.shape)).astype(np.float32) if noise else tomo0
            r, shift = bench_series(tomo, voxel, true_A, params, tilt_range_deg(s.geometry), shift)
            out["series"][f"{s.name}" + (f"_noise{noise:g}" if noise else "")] = r
            n, o = r["new"], r["old"]
            print(f"{s.name:8s} {noise:5.1f} | {n['n_picked']:11d} {n['recall']:6.3f} {n['precision']:6.3f} "
                  f"{n['threshold']:6.3f} {n['how']:>9s} | {o['n_picked']:11d} {o['recall']:6.3f} "
                  f"{o['precision']:6.3f} {o['threshold']:6.3f} | {n['oracle']['f1']:9.3f} {n['highest']:7.3f}")
            print(f"{'':14s}  {n['slab']}; true heights {n['true_heights_px']} px, region {n['slab_range_px']}")
    out["loadavg_after"] = os.getloadavg()
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / f"pick_{name}_{a.template}.json"
    path.write_text(json.dumps(out, indent=1, default=float))
    print("wrote", path)


if __name__ == "__main__":
    main()
