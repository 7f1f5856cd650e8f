"""Refining the acquisition from the particles (issue 19, item 4) on a finished project with a planted error.

    python bench/acquisition_refine.py --project P --truth T [--binning 2] [--seed 0] [--out bench/results]

The project's own alignment and CTF (``exclude`` step) are taken as correct (they are within 0.02-0.04 px and
11 Å of the simulator's truth, README *Measured*). Planted: every non-excluded view's specimen shift moved by 1-3
px (px of the full-size series, random directions) and its defocus by 300-1000 Å (random sign). Then, with the
``refine`` step's poses, half sets and half maps (what ``extract_fine`` has), :func:`tomoguide.steps.
acquisition_refine.refine_series` recovers the per-view corrections. Figures: the shift error RMS (px of the
full-size series) and the defocus error median (Å) against the unperturbed records, before and after; the same
run on the unperturbed records (a correct acquisition must stay); and the maps: half maps reconstructed from the
finer extraction (binning ``--binning``, the extract_fine sizes) with (a) the correct records, (b) the perturbed
ones, (c) the refined ones: FSC against the true map (0.5) and half-map FSC (0.143, masked), symmetry O.
Writes ``bench/results/acquisition_refine.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np


def main() -> None:
    from tomoguide import truth
    from tomoguide.compute import fsc as F
    from tomoguide.compute import sta
    from tomoguide.compute.euler import euler_to_matrix
    from tomoguide.compute.io.mrc import read_mrc
    from tomoguide.compute.io.star import read_ctf_star, read_particles_star
    from tomoguide.compute.rescale import fourier_bin
    from tomoguide.project import Project
    from tomoguide.steps import acquisition_refine as SA
    from tomoguide.steps.average_records import AverageRecord, ParticleStack
    from tomoguide.steps.extract import (ANGLES, PARTICLE_DIAMETER_A, ExtractFine, ExtractFineParams,
                                         _centred_positions)
    from tomoguide.steps.records import SeriesSet

    ap = argparse.ArgumentParser()
    ap.add_argument("--project", type=Path, required=True)
    ap.add_argument("--truth", type=Path, required=True)
    ap.add_argument("--binning", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--one-pass", action="store_true", help="only the pass against the refinement's half maps")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args()
    load0 = os.getloadavg()
    rng = np.random.default_rng(args.seed)
    proj = Project.open(args.project, readonly=True)
    sset, base = SeriesSet.load(proj.output_path("exclude", "series"))
    rec, rbase = AverageRecord.load(proj.output_path("refine", "average"))
    fine, _ = ParticleStack.load(proj.output_path("extract_fine", "particles"))
    box_e = int(fine.info.get("box_before_crop_px") or fine.box_px)
    crop = int(fine.box_px)
    df = read_particles_star(rec.path("particles", rbase)).particles
    df = ExtractFine()._prepare(df, ExtractFineParams())
    halves = [np.asarray(read_mrc(rec.path(h, rbase))[0], np.float32) for h in ("half1", "half2")]
    mask = np.asarray(read_mrc(rec.path("mask", rbase))[0], np.float32)
    b = float(args.binning)

    out: dict = {"project": str(args.project), "binning": b, "box_px": box_e, "crop_px": crop,
                 "refine_resolution_A": rec.resolution_A, "refine_voxel_A": rec.voxel_A, "series": {}}
    conds = {"correct": {}, "perturbed": {}, "refined": {}, "correct_refined": {}}
    stacks = {}
    times: dict[str, float] = {}
    gauge_all: list[dict] = []
    err = {"shift_before": [], "shift_after": [], "df_before": [], "df_after": [], "shift_correct": [],
           "df_correct": []}
    inputs = {"perturbed": [], "correct": []}
    planted = {}
    for s in sset.series:
        g0 = s.geometry
        table = read_ctf_star(s.path("ctf_star", base))
        rows = np.flatnonzero(df["rlnTomoName"].astype(str).to_numpy() == s.name)
        if rows.size == 0:
            continue
        st = np.asarray(read_mrc(s.path("stack", base))[0], np.float32)
        st = fourier_bin(st, b / g0.binning) if abs(b / g0.binning - 1) > 1e-6 else st
        stacks[s.name] = st
        views = g0.included_views()
        k = views.size
        ang = rng.uniform(0, 2 * np.pi, k)
        mag = rng.uniform(1.0, 3.0, k)
        d_shift = np.stack([mag * np.cos(ang), mag * np.sin(ang)], 1)  # px at g0's binning
        d_df = rng.uniform(300.0, 1000.0, k) * rng.choice([-1.0, 1.0], k)
        gp = SA.corrected_geometry(g0, views, d_shift, g0.binning)
        tp = SA.corrected_ctf_table(table, views, d_df)
        planted[s.name] = (g0, table, gp, tp, views)
        sub = df.iloc[rows]
        common = {"stack": st, "positions_A": _centred_positions(sub), "euler_deg": sub[list(ANGLES)].to_numpy(
            np.float64), "half": sub["rlnRandomSubset"].to_numpy(np.int64) - 1, "n": int(rows.size)}
        inputs["perturbed"].append({**common, "geometry": gp, "ctf": tp, "name": s.name})
        inputs["correct"].append({**common, "geometry": g0, "ctf": table, "name": s.name})
    results = {}
    for cname, items in inputs.items():
        t0 = time.perf_counter()
        results[cname], info = SA.refine_all(items, halves, mask, rec.voxel_A, float(rec.resolution_A), binning=b,
                                             box_px=box_e, crop_px=crop, symmetry=rec.symmetry,
                                             mask_diameter_A=PARTICLE_DIAMETER_A, second_pass=not args.one_pass)
        times[f"refine_{cname}_s"] = time.perf_counter() - t0
        out[f"half_map_resolutions_{cname}_A"] = info
    for i, it in enumerate(inputs["perturbed"]):
        name = it["name"]
        g0, table, gp, tp, views = planted[name]
        rp, rc = results["perturbed"][i], results["correct"][i]
        g_ref, t_ref, g_cr, t_cr = rp["geometry"], rp["ctf"], rc["geometry"], rc["ctf"]
        k = views.size
        s_true = g0.specimen_shifts_px()[views]
        df_true = table["rlnDefocusU"].to_numpy(float)[views]
        e_sb = gp.specimen_shifts_px()[views] - s_true
        e_sa = g_ref.specimen_shifts_px()[views] - s_true
        e_sc = g_cr.specimen_shifts_px()[views] - s_true
        e_db = tp["rlnDefocusU"].to_numpy(float)[views] - df_true
        e_da = t_ref["rlnDefocusU"].to_numpy(float)[views] - df_true
        e_dc = t_cr["rlnDefocusU"].to_numpy(float)[views] - df_true
        for key, v in (("shift_before", e_sb), ("shift_after", e_sa), ("shift_correct", e_sc)):
            err[key].append(v)
        # the same with the specimen's 3D origin translation removed (no alignment can fix it: a common move of
        # all particles), and the refined records against the simulator's true geometry
        axis, tilts = g0.tilt_axis_deg, g0.true_tilt_deg()[views]
        gauge = {key: truth.origin_removed_shift_rms(v + s_true, s_true, axis, tilts)[0]
                 for key, v in (("before", e_sb), ("after", e_sa), ("correct", e_sc))}
        tg = truth.true_geometry(args.truth, name)
        tv = np.array([int(np.argmin(np.abs(np.asarray(tg.tilt_angles_deg) - t)))
                       for t in np.asarray(g0.tilt_angles_deg)[views]])
        s_truth = tg.at_binning(g0.binning).specimen_shifts_px()[tv]
        vs_truth = {key: truth.origin_removed_shift_rms(gg.specimen_shifts_px()[views], s_truth, axis, tilts)[0]
                    for key, gg in (("records", g0), ("perturbed_refined", g_ref), ("records_refined", g_cr))}
        ttab = truth.true_tilt_table(args.truth, name)
        df_truth = 0.5 * (ttab["rlnDefocusU"].to_numpy(float) + ttab["rlnDefocusV"].to_numpy(float))[tv]
        df_vs_truth = {key: float(np.median(np.abs(0.5 * (t["rlnDefocusU"].to_numpy(float) + t["rlnDefocusV"]
                                                          .to_numpy(float))[views] - df_truth)))
                       for key, t in (("records", table), ("perturbed", tp), ("perturbed_refined", t_ref),
                                      ("records_refined", t_cr))}
        for key, v in (("df_before", e_db), ("df_after", e_da), ("df_correct", e_dc)):
            err[key].append(v)
        last = rp["passes"][-1]
        out["series"][name] = {
            "n_particles": it["n"], "views": int(k),
            "views_refined_per_pass": [int(p.refined.sum()) for p in rp["passes"]],
            "views_defocus_refined_per_pass": [int(np.sum(p.refined_defocus)) for p in rp["passes"]],
            "z_score_median_per_pass": [float(np.median(p.z_score)) for p in rp["passes"]],
            "z_defocus_median_per_pass": [float(np.median(p.z_defocus)) for p in rp["passes"]],
            "shift_residual_px": np.round(e_sa, 3).tolist(), "defocus_residual_A": np.round(e_da, 1).tolist(),
            "correct_views_changed": int(rc["passes"][-1].refined.sum()),
            "correct_shift_change_px": np.round(e_sc, 3).tolist(),
            "correct_defocus_change_A": np.round(e_dc, 1).tolist(),
            "shift_rms_origin_removed_px": gauge, "shift_rms_vs_simulator_truth_origin_removed_px": vs_truth,
            "defocus_median_abs_vs_simulator_truth_A": df_vs_truth,
            "fom_last_pass_median": float(np.median(last.fom_after)),
        }
        gauge_all.append(gauge)
        conds["correct"][name] = (g0, table)
        conds["perturbed"][name] = (gp, tp)
        conds["refined"][name] = (g_ref, t_ref)
        conds["correct_refined"][name] = (g_cr, t_cr)

    def rms(v):
        a = np.concatenate(v)
        return float(np.sqrt(np.mean(np.sum(a ** 2, axis=1))))

    def med(v):
        return float(np.median(np.abs(np.concatenate(v))))

    px_full = sset.series[0].geometry.pixel_size_binned_A
    out["recovery"] = {
        "shift_unit": f"px of the full-size series ({px_full:g} Å)",
        "shift_rms_before_px": rms(err["shift_before"]), "shift_rms_after_px": rms(err["shift_after"]),
        "defocus_median_abs_before_A": med(err["df_before"]), "defocus_median_abs_after_A": med(err["df_after"]),
        "correct_acquisition_shift_change_rms_px": rms(err["shift_correct"]),
        "correct_acquisition_defocus_change_median_abs_A": med(err["df_correct"]),
        "targets": {"shift_rms_px": 0.3, "defocus_median_A": 50.0},
        "origin_removed_shift_rms_px": {k: float(np.sqrt(np.mean([g[k] ** 2 for g in gauge_all])))
                                        for k in ("before", "after", "correct")},
    }

    # maps: half maps from the finer extraction with each set of records
    ref_true = None
    maps = {}
    t0 = time.perf_counter()
    for cname, recs in conds.items():
        sets, rots, halfs = [], [], []
        for s in sset.series:
            rows = np.flatnonzero(df["rlnTomoName"].astype(str).to_numpy() == s.name)
            if rows.size == 0 or s.name not in recs:
                continue
            g, t = recs[s.name]
            gb = g.at_binning(b)
            gb = gb.model_validate({**gb.model_dump(), "image_shape_px": list(stacks[s.name].shape[1:])})
            sub = df.iloc[rows]
            sets.append(sta.extract_subtilts(stacks[s.name], gb, _centred_positions(sub), box_px=box_e,
                                             crop_px=crop, keep_uncropped=True, ctf=sta.ViewCTF.from_star(t)))
            rots.append(euler_to_matrix(sub[list(ANGLES)].to_numpy(np.float64)))
            halfs.append(sub["rlnRandomSubset"].to_numpy(np.int64) - 1)
        r_all, h_all = np.concatenate(rots), np.concatenate(halfs)
        voxel = sets[0].pixel_size_A
        recon = sta.Reconstructor(sets)
        hm = [recon.reconstruct(r_all, select=h_all == h, symmetry="O") for h in (0, 1)]
        del recon
        if ref_true is None:
            ref_true = truth.true_reference_map(args.truth, voxel, crop)
            msk = F.soft_sphere_mask(crop, 75.0 / voxel, 3.0)
        avg = 0.5 * (hm[0] + hm[1])
        freqs, f_truth = F.fsc(avg, ref_true, voxel_A=voxel, mask=msk)
        corr = F.masked_fsc_corrected(hm[0], hm[1], msk, voxel_A=voxel)
        maps[cname] = {"res_truth_fsc05_A": F.resolution_at(f_truth, freqs, 0.5),
                       "res_halves_fsc0143_corrected_A": F.resolution_at(corr["fsc_true"], freqs, 0.143),
                       "fsc_truth_mean_to_nyquist": float(np.mean(f_truth[1:])),
                       "fsc_truth": np.round(f_truth, 4).tolist()}
    times["maps_s"] = time.perf_counter() - t0
    out["maps"] = maps
    out["voxel_A"] = voxel
    out["times"] = times
    out["load_average"] = {"start": load0, "end": os.getloadavg()}
    out["cpu_count"] = os.cpu_count()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "acquisition_refine.json"
    path.write_text(json.dumps(out, indent=1))
    print(json.dumps({k: out[k] for k in ("recovery", "times")}, indent=1))
    print({k: {kk: vv for kk, vv in v.items() if kk != "fsc_truth"} for k, v in maps.items()})


if __name__ == "__main__":
    main()
