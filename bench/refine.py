"""Benchmark of the initial model and gold-standard auto-refine (tomoguide.compute.initial_model / refine, issue 7).

    python bench/refine.py [--project /tmp/demo_small/project] [--truth /tmp/demo_small/truth]
                           [--positions picks|truth] [--coarse-bin 6 --coarse-box 32 --coarse-crop 24]
                           [--fine-bin 2 --fine-box 96 --fine-crop 64] [--out bench/results]

The pipeline as the project runs it: the "exclude" step's unflipped stacks, the project's geometry and CTF STAR
per series; particle positions from the "pick" step's particles.star (project tomogram frame), or with
``--positions truth`` the TRUE positions in the TRUE geometry (orientations never come from the truth).
Extraction at the coarse binning (sub-tilts with CTF pre-multiplication and dose weights, cropped, back-projected
into 3D pseudo-subtomograms), reference-free initial model (O symmetry), auto-refine from it (global search
first), re-extraction at the fine binning at the refined positions (extraction position + refined shift) with
the poses carried over, reconstruction of the half maps without search, and auto-refine at the fine binning
(local searches from the carried poses, initial low-pass 15 Å).

Accuracy (against the simulator's truth): picks are matched to the true particles after one global translation
(:func:`tomoguide.compute.pick.register_translation`, the tomogram origin comes from the alignment); refined
orientations vs the true ones, ``min_S angle(R, R_true S)`` over the 24 operators of O (the model's symmetry
axes are those of symmetry_matrices("O"), as the truth map's: an O-symmetric map's orientation is fixed up to
O itself, so no global rotation remains; it is nevertheless measured by registering the map to the truth);
the final map's half-map FSC (masked, phase-randomisation corrected) 0.143 resolution, its FSC against
truth/apoferritin.mrc Fourier-binned to the same voxel (registered by an integer shift, soft mask) at 0.5, and
the hand (correlation with the truth vs with its z mirror). Writes ``OUT/refine_<tag>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import mrcfile
import numpy as np
import starfile

from tomoguide import truth
from tomoguide.compute import fsc as F
from tomoguide.compute import refine as RF
from tomoguide.compute import sta
from tomoguide.compute.io.star import read_ctf_star
from tomoguide.compute.euler import euler_to_matrix, rotation_angle_deg
from tomoguide.compute.initial_model import initial_model
from tomoguide.compute.pick import match_to_truth, register_translation
from tomoguide.compute.rescale import fourier_bin
from tomoguide.compute.symmetry import symmetry_matrices
from tomoguide.project import Project
from tomoguide.steps.records import SeriesSet

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sta import profile_metrics  # noqa: E402  (bench/sta.py: the centre artefact of issue 19)

XYZ = ["rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst", "rlnCenteredCoordinateZAngst"]


def _cc(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    a = (a - a.mean()) * mask
    b = (b - b.mean()) * mask
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


class Series:
    """One tilt series: its stack (at the project's binning), geometry, CTF and particle positions (Å)."""

    def __init__(self, name: str, stack: np.ndarray, geometry: object, ctf: sta.ViewCTF, positions_A: np.ndarray,
                 true_rot: np.ndarray, true_pos_A: np.ndarray) -> None:
        self.name, self.stack, self.geometry, self.ctf = name, stack, geometry, ctf
        self.positions_A, self.true_rot, self.true_pos_A = positions_A, true_rot, true_pos_A


def load(args: argparse.Namespace) -> tuple[list[Series], dict]:
    proj = Project.open(args.project, readonly=True)
    sset, base = SeriesSet.load(proj.output_path("exclude", "series"))
    parts = starfile.read(args.truth / "particles.star")["particles"]
    picks = None
    if args.positions == "picks":
        picks = starfile.read(proj.output_path("pick", "particles"))
        picks = picks["particles"] if isinstance(picks, dict) else picks
    out, info = [], {}
    for entry in sset.series:
        name = entry.name
        with mrcfile.open(entry.path("stack", base), permissive=True) as m:
            stack = np.asarray(m.data, dtype=np.float32)
        tp = parts[parts["rlnTomoName"] == name]
        true_pos = tp[XYZ].to_numpy(np.float64)
        true_rot = euler_to_matrix(tp[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy())
        if picks is not None:
            g = entry.geometry
            ctf = sta.ViewCTF.from_star(read_ctf_star(entry.path("ctf_star", base)))
            pp = picks[picks["rlnTomoName"] == name][XYZ].to_numpy(np.float64)
            shift = register_translation(pp, true_pos, max_shift=150.0, tolerance=30.0)
            mt = match_to_truth(pp + shift, true_pos, max_distance=40.0)
            pairs = mt["pairs"]
            pos = pp[pairs[:, 0]]
            info[name] = {"n_picked": int(len(pp)), "n_matched": int(len(pairs)),
                          "registration_shift_A": shift.tolist(), "pick_rms_A": mt["rms_distance"]}
            true_rot, true_pos = true_rot[pairs[:, 1]], true_pos[pairs[:, 1]]
            offset = shift
        else:
            tg = truth.true_geometry(args.truth, name).at_binning(entry.geometry.binning)
            g = tg.model_validate({**tg.model_dump(), "image_shape_px": stack.shape[1:],
                                   "excluded": entry.geometry.excluded})
            ctf = sta.ViewCTF.from_star(truth.true_tilt_table(args.truth, name))
            pos = true_pos.copy()
            offset = np.zeros(3)
            info[name] = {"n_particles": int(len(pos))}
        if args.max_particles:
            k = args.max_particles
            pos, true_rot, true_pos = pos[:k], true_rot[:k], true_pos[:k]
        s = Series(name, stack, g, ctf, pos, true_rot, true_pos)
        s.offset_A = offset  # project frame + offset = truth frame
        out.append(s)
    return out, info


def extract(series: list[Series], positions: list[np.ndarray], binning: float, box: int, crop: int | None
            ) -> tuple[np.ndarray, np.ndarray, float, dict, object]:
    """Pseudo-subtomograms of all series at ``binning``: (data, weights, voxel_A, times, reconstructor) — the
    :class:`sta.Reconstructor` of the sub-tilts before the crop (what the averaging steps reconstruct from since
    issue 19; None with the code before it)."""
    t = {"fourier_bin_s": 0.0, "extract_subtilts_s": 0.0, "backproject_s": 0.0}
    data, weights, sets = [], [], []
    voxel = 0.0
    new = hasattr(sta, "Reconstructor")
    for s, pos in zip(series, positions, strict=True):
        t0 = time.perf_counter()
        g = s.geometry
        f = binning / g.binning
        stack = fourier_bin(s.stack, f) if abs(f - 1) > 1e-6 else s.stack
        gb = g.at_binning(binning) if hasattr(g, "at_binning") else g
        gb = gb.model_validate({**gb.model_dump(), "image_shape_px": stack.shape[1:]})
        t["fourier_bin_s"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        kw = {"keep_uncropped": True} if new else {}
        st = sta.extract_subtilts(stack, gb, pos, box_px=box, ctf=s.ctf, crop_px=crop, **kw)
        t["extract_subtilts_s"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        d, w = sta.pseudo_subtomograms(st)
        t["backproject_s"] += time.perf_counter() - t0
        data.append(d)
        weights.append(w)
        sets.append(st.uncropped if new and st.uncropped is not None else st)
        voxel = st.pixel_size_A
    rec = None
    if new:
        t0 = time.perf_counter()
        rec = sta.Reconstructor(sets)
        t["reconstructor_s"] = time.perf_counter() - t0
    return np.concatenate(data), np.concatenate(weights), voxel, t, rec


def accuracy(res: RF.RefineResult, true_rot: np.ndarray, truth_dir: Path, tag: str) -> dict:
    voxel, b = res.voxel_A, res.half1.shape[0]
    ref = truth.true_reference_map(truth_dir, voxel, b)
    err = RF.symmetry_angle_error_deg(res.poses.rotations, true_rot, "O")
    mask = F.soft_sphere_mask(b, 75.0 / voxel, 3.0)
    full = 0.5 * (res.half1 + res.half2)
    cc_reg, shift = truth.registered_correlation(full * mask, ref * mask, max_shift_px=4)
    moved = np.roll(ref, shift, axis=(0, 1, 2))
    freqs, fsc_truth = F.fsc(full, moved, voxel_A=voxel, mask=mask)
    cc_mirror, _ = truth.registered_correlation(full * mask, ref[::-1].copy() * mask, max_shift_px=4)
    # any residual global rotation between the map and the truth (should be ~0 or an element of O)
    r_glob, _, _ = RF.register_rotation(full, moved, voxel_A=voxel, resolution_A=max(res.resolution_A, 3 * voxel),
                                        symmetry="O", step_deg=15.0, mask_diameter_A=150.0)
    return {
        f"{tag}_angle_error_deg": {"median": float(np.median(err)), "mean": float(np.mean(err)),
                                   "p90": float(np.percentile(err, 90)), "max": float(np.max(err)),
                                   "fraction_below_5deg": float(np.mean(err < 5.0))},
        f"{tag}_resolution_halves_corrected_A": res.resolution_A,
        f"{tag}_resolution_halves_unmasked_A": F.resolution_at(res.fsc_unmasked, res.freqs_per_A, 0.143),
        f"{tag}_resolution_truth_fsc05_A": F.resolution_at(fsc_truth, freqs, 0.5),
        f"{tag}_resolution_truth_fsc0143_A": F.resolution_at(fsc_truth, freqs, 0.143),
        f"{tag}_nyquist_A": 2 * voxel,
        f"{tag}_cc_truth_registered": cc_reg, f"{tag}_cc_truth_mirrored": cc_mirror,
        f"{tag}_map_shift_vs_truth_zyx_px": shift,
        f"{tag}_global_rotation_vs_truth_deg": float(min(rotation_angle_deg(r_glob, s_)
                                                         for s_ in symmetry_matrices("O"))),
        f"{tag}_centre_profile": profile_metrics(full, moved, voxel),
        f"{tag}_fsc": {"freqs_A": res.freqs_per_A.tolist(), "halves_corrected": res.fsc_corrected.tolist(),
                       "truth": fsc_truth.tolist()},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--project", type=Path, default=Path("/tmp/demo_small/project"))
    ap.add_argument("--truth", type=Path, default=Path("/tmp/demo_small/truth"))
    ap.add_argument("--positions", choices=("picks", "truth"), default="picks")
    ap.add_argument("--coarse-bin", type=float, default=6.0)
    ap.add_argument("--coarse-box", type=int, default=32)
    ap.add_argument("--coarse-crop", type=int, default=24)
    ap.add_argument("--fine-bin", type=float, default=2.0)
    ap.add_argument("--fine-box", type=int, default=96)
    ap.add_argument("--fine-crop", type=int, default=64)
    ap.add_argument("--n-minibatches", type=int, default=40)
    ap.add_argument("--max-particles", type=int, default=0, help="per series; 0 = all")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args()

    load0 = os.getloadavg()
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    series, info = load(args)
    times["load_s"] = time.perf_counter() - t0
    true_rot = np.concatenate([s.true_rot for s in series])
    m = len(true_rot)
    print(f"{m} particles; {info}", flush=True)

    # --- coarse: extraction, initial model, refine
    data, weights, voxel, tx, rec_c = extract(series, [s.positions_A for s in series], args.coarse_bin,
                                              args.coarse_box, args.coarse_crop)
    sub_c = {} if rec_c is None else {"subtilts": rec_c}
    times.update({f"coarse_{k}": v for k, v in tx.items()})
    t0, c0 = time.perf_counter(), time.process_time()
    im = initial_model(data, weights, voxel, symmetry="O", n_minibatches=args.n_minibatches, regularisation=4.0,
                       mask_diameter_A=150.0, angular_step_deg=15.0, seed=0, **sub_c)
    times["initial_model_s"] = time.perf_counter() - t0
    times["initial_model_cpu_s"] = time.process_time() - c0
    b_c = data.shape[-1]
    ref_c = truth.true_reference_map(args.truth, voxel, b_c)
    mask_c = F.soft_sphere_mask(b_c, 75.0 / voxel, 2.0)
    lp = F.lowpass(ref_c, im.resolution_A, voxel)
    im_cc, _ = truth.registered_correlation(im.map * mask_c, lp * mask_c, max_shift_px=3)
    im_cc_m, _ = truth.registered_correlation(im.map * mask_c, lp[::-1].copy() * mask_c, max_shift_px=3)
    im_err = RF.symmetry_angle_error_deg(im.poses.rotations, true_rot, "O")
    print(f"initial model {times['initial_model_s']:.1f} s: cc truth {im_cc:.3f} (mirror {im_cc_m:.3f}), "
          f"median angle error {np.median(im_err):.1f}°", flush=True)

    t0, c0 = time.perf_counter(), time.process_time()
    r6 = RF.auto_refine(data, weights, voxel, im.map, symmetry="O", mask_diameter_A=150.0, initial_lowpass_A=60.0,
                        initial_angular_step_deg=7.5, local_searches_from_deg=1.8, offset_range_px=5.0,
                        offset_step_px=1.0, seed=0, **sub_c)
    times["refine_coarse_s"] = time.perf_counter() - t0
    times["refine_coarse_cpu_s"] = time.process_time() - c0
    acc6 = accuracy(r6, true_rot, args.truth, "coarse")
    print(f"refine bin {args.coarse_bin:g}: {times['refine_coarse_s']:.1f} s, {r6.resolution_A:.1f} Å, angle error "
          f"median {acc6['coarse_angle_error_deg']['median']:.2f}°", flush=True)
    del data, weights, rec_c, sub_c

    # --- fine: re-extract at the refined positions, reconstruct, refine
    shifts = r6.poses.shifts_A
    pos_f, i = [], 0
    for s in series:
        n = len(s.positions_A)
        pos_f.append(s.positions_A + shifts[i:i + n])
        i += n
    data, weights, voxel_f, tx, rec_f = extract(series, pos_f, args.fine_bin, args.fine_box, args.fine_crop)
    sub_f = {} if rec_f is None else {"subtilts": rec_f}
    times.update({f"fine_{k}": v for k, v in tx.items()})
    b_f = data.shape[-1]
    carried = RF.Poses(r6.poses.rotations.copy(), np.zeros((m, 3)), r6.poses.scores.copy())
    t0 = time.perf_counter()
    rec = RF.reconstruct_halves(data, weights, carried, r6.half_sets, symmetry="O", voxel_A=voxel_f,
                                mask_diameter_A=150.0, **sub_f)
    times["reconstruct_fine_s"] = time.perf_counter() - t0
    acc_rec = accuracy(rec, true_rot, args.truth, "reconstruct_fine")
    print(f"reconstruct bin {args.fine_bin:g}: {times['reconstruct_fine_s']:.1f} s, {rec.resolution_A:.2f} Å",
          flush=True)
    ref_f = RF.resample_map(r6.merged, voxel, voxel_f, b_f)
    t0, c0 = time.perf_counter(), time.process_time()
    r2 = RF.auto_refine(data, weights, voxel_f, ref_f, symmetry="O", mask_diameter_A=150.0, initial_lowpass_A=15.0,
                        initial_angular_step_deg=7.5, local_searches_from_deg=1.8, offset_range_px=5.0,
                        offset_step_px=1.0, initial_poses=carried, half_sets=r6.half_sets, seed=0, **sub_f)
    times["refine_fine_s"] = time.perf_counter() - t0
    times["refine_fine_cpu_s"] = time.process_time() - c0
    acc2 = accuracy(r2, true_rot, args.truth, "fine")
    print(f"refine bin {args.fine_bin:g}: {times['refine_fine_s']:.1f} s, {r2.resolution_A:.2f} Å, truth FSC 0.5 "
          f"{acc2['fine_resolution_truth_fsc05_A']:.2f} Å, angle error median "
          f"{acc2['fine_angle_error_deg']['median']:.2f}°", flush=True)

    nyq = 2 * voxel_f
    out = {
        "project": str(args.project), "truth": str(args.truth), "positions": args.positions, "series": info,
        "n_particles": m,
        "coarse": {"binning": args.coarse_bin, "box": args.coarse_box, "crop": args.coarse_crop, "voxel_A": voxel},
        "fine": {"binning": args.fine_bin, "box": args.fine_box, "crop": args.fine_crop, "voxel_A": voxel_f},
        "times": times,
        "initial_model": {"cc_truth_registered": im_cc, "cc_truth_mirrored": im_cc_m,
                          "resolution_A": im.resolution_A,
                          "angle_error_deg_median": float(np.median(im_err)),
                          "fraction_below_10deg": float(np.mean(im_err < 10.0))},
        **{k: v for k, v in acc6.items()},
        "coarse_history": r6.history,
        **{k: v for k, v in acc_rec.items() if not k.endswith("_fsc")},
        **acc2,
        "fine_history": r2.history,
        "criteria": {
            "halves_fsc0143_over_nyquist": r2.resolution_A / nyq, "halves_ok (<= 1.15)": r2.resolution_A <= 1.15 * nyq,
            "truth_fsc05_over_nyquist": acc2["fine_resolution_truth_fsc05_A"] / nyq,
            "truth_ok (<= 1.5)": acc2["fine_resolution_truth_fsc05_A"] <= 1.5 * nyq,
            "right_hand": acc2["fine_cc_truth_registered"] > acc2["fine_cc_truth_mirrored"],
        },
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": sys.version.split()[0],
                    "loadavg_before": load0, "loadavg_after": os.getloadavg()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    tag = args.truth.parent.name.replace("demo_", "") or "data"
    suffix = "" if args.positions == "picks" else "_truepos"
    path = args.out / f"refine_{tag}{suffix}.json"
    path.write_text(json.dumps(out, indent=1, default=float))
    print(json.dumps({k: v for k, v in out.items() if not k.endswith("_fsc") and "history" not in k}, indent=1,
                     default=float))
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
