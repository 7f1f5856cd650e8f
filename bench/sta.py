"""Benchmark of the subtomogram-averaging core (tomoguide.compute.sta, issue 7) with TRUE poses.

    python bench/sta.py [--project /tmp/demo_small/project] [--truth /tmp/demo_small/truth] [--binning 2]
                        [--box 64] [--crop 0] [--symmetry O] [--ctf truth|project] [--pad 2] [--out bench/results]

Data: a demo project run at least through ``exclude`` (its unflipped, motion-corrected stacks and CTF STARs);
the simulator's TRUE geometry of each series (``truth.true_geometry(...).at_binning(b)``, with the project's view
exclusions) and the TRUE particles (``truth/particles.star``: centred Å coordinates and RELION Euler angles).
CTF per view: the truth's ``rlnDefocusU/V/Angle`` (defocus at depth 0, the convention of
:class:`tomoguide.compute.sta.ViewCTF`) or, with ``--ctf project``, the project's fitted CTF STAR (defocus at
the raw image centre; the difference, the depth of the slab mid-plane under the image centre, is ignored).

Measured: time of the Fourier binning of the stacks, of :func:`extract_subtilts` (all particles × views; with
``--crop`` the sub-tilts before the crop are kept and the averages made from them), of :func:`reconstruct_average`
(all particles, symmetry expanded; ``--pad`` 2: 2× oversampled, gridding-corrected, the bias of the gridding
corrected when the sub-tilts allow it; 1: the earlier unpadded insertion) and of the 3D pseudo-subtomogram path
(:func:`backproject_subtomogram` per particle, :func:`average_from_subtomograms`) on a subset; accuracy of the
average against ``truth/apoferritin.mrc`` Fourier-binned to the same voxel size: masked correlation, the
same with the z-mirrored truth (hand), FSC (soft spherical mask) and its 0.5 / 0.143 resolutions and lowest shell;
the centre artefact of issue 19 (radial profiles of the average and the truth low-passed to 12 Å:
``centre_profile``); gold-standard half sets (random split): FSC 0.143 resolution, unmasked, masked and
phase-randomisation corrected.
Writes ``OUT/sta_<preset-dir>_bin<b>.json`` and prints a summary.
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
from tomoguide.compute import sta
from tomoguide.compute.io.star import read_ctf_star
from tomoguide.compute.euler import euler_to_matrix
from tomoguide.compute.rescale import fourier_bin
from tomoguide.project import Project
from tomoguide.steps.records import SeriesSet


def _cc(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    a = (a - a.mean()) * mask
    b = (b - b.mean()) * mask
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def _select(st: sta.Subtilts, idx: np.ndarray) -> sta.Subtilts:
    """Some particles of a sub-tilt set (with the code before issue 19 too, which had no ``Subtilts.select``)."""
    if hasattr(st, "select"):
        return st.select(idx)
    return sta.Subtilts(st.images[idx], st.weights[idx], st.view_matrices, st.views, st.pixel_size_A, st.defocus_A[idx])


def radial_profile(vol: np.ndarray) -> np.ndarray:
    """Mean of a cubic map (centre ``n // 2``) over shells of integer radius (voxels) about its centre."""
    n = vol.shape[0]
    c = np.arange(n) - n // 2
    r = np.rint(np.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)).astype(np.int64)
    return np.bincount(r.ravel(), vol.ravel()) / np.maximum(np.bincount(r.ravel()), 1)


def profile_metrics(vol: np.ndarray, ref: np.ndarray, voxel_A: float, *, lowpass_A: float = 12.0,
                    radius_A: float = 75.0) -> dict:
    """The centre artefact of issue 19: both maps low-passed to ``lowpass_A``, their radial profiles out to
    ``radius_A`` (normalised to the shell's maximum); the map's profile scaled to the truth's by least squares;
    ``centre_over_shell`` (map and truth), the RMS profile difference in units of the shell's height."""
    pv = radial_profile(F.lowpass(vol, lowpass_A, voxel_A))
    pr = radial_profile(F.lowpass(ref, lowpass_A, voxel_A))
    n = int(radius_A / voxel_A)
    pv, pr = pv[:n], pr[:n]
    shell = int(np.argmax(pr))
    scale = float(np.dot(pv, pr) / np.dot(pr, pr))
    return {"lowpass_A": lowpass_A, "centre_over_shell": float(pv[0] / pv[shell]),
            "truth_centre_over_shell": float(pr[0] / pr[shell]),
            "profile_rms_error_over_shell": float(np.sqrt(np.mean((pv / scale - pr) ** 2)) / pr[shell]),
            "profile": (pv / pv[shell]).round(3).tolist(), "truth_profile": (pr / pr[shell]).round(3).tolist()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--project", type=Path, default=Path("/tmp/demo_small/project"))
    ap.add_argument("--truth", type=Path, default=Path("/tmp/demo_small/truth"))
    ap.add_argument("--binning", type=float, default=2.0)
    ap.add_argument("--box", type=int, default=64)
    ap.add_argument("--symmetry", default="O")
    ap.add_argument("--ctf", choices=("truth", "project"), default="truth")
    ap.add_argument("--pad", type=int, default=2, help="Fourier oversampling of the reconstructions (issue 19: 2)")
    ap.add_argument("--max-particles", type=int, default=0, help="per series; 0 = all")
    ap.add_argument("--subtomo-subset", type=int, default=20, help="particles for the 3D pseudo-subtomogram path")
    ap.add_argument("--crop", type=int, default=0, help="cropped box (0: none; the sub-tilts before the crop are "
                                                         "then used for the averages, as the averaging steps do)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args()

    load0 = os.getloadavg()
    proj = Project.open(args.project, readonly=True)
    sset, base = SeriesSet.load(proj.output_path("exclude", "series"))
    parts = starfile.read(args.truth / "particles.star")["particles"]
    b = float(args.binning)
    times: dict[str, float] = {"fourier_bin_s": 0.0, "extract_s": 0.0}
    sets: list[sta.Subtilts] = []
    rots: list[np.ndarray] = []
    n_views_used = []
    for entry in sset.series:
        name = entry.name
        t0 = time.perf_counter()
        with mrcfile.open(entry.path("stack", base), permissive=True) as m:
            stack = np.asarray(m.data, dtype=np.float32)
        g_proj = entry.geometry
        stack = fourier_bin(stack, b / g_proj.binning) if abs(b / g_proj.binning - 1) > 1e-6 else stack
        times["fourier_bin_s"] += time.perf_counter() - t0
        tg = truth.true_geometry(args.truth, name).at_binning(b)
        tg = tg.model_validate({**tg.model_dump(), "image_shape_px": stack.shape[1:], "excluded": g_proj.excluded})
        if args.ctf == "truth":
            ctf = sta.ViewCTF.from_star(truth.true_tilt_table(args.truth, name))
        else:
            ctf = sta.ViewCTF.from_star(read_ctf_star(entry.path("ctf_star", base)))
        p = parts[parts["rlnTomoName"] == name]
        if args.max_particles:
            p = p.iloc[: args.max_particles]
        pos = p[["rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst", "rlnCenteredCoordinateZAngst"]]
        t0 = time.perf_counter()
        kw = {"crop_px": args.crop, "keep_uncropped": True} if args.crop else {}
        st = sta.extract_subtilts(stack, tg, pos.to_numpy(), box_px=args.box, ctf=ctf, dose_weighting=True, **kw)
        times["extract_s"] += time.perf_counter() - t0
        sets.append(st)
        n_views_used.append(int(st.views.size))
        rots.append(euler_to_matrix(p[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy()))
        del stack
    r_all = np.concatenate(rots)
    m_total = len(r_all)
    voxel = sets[0].pixel_size_A

    t0 = time.perf_counter()
    avg = sta.reconstruct_average(sets, r_all, symmetry=args.symmetry, pad=args.pad)
    times["reconstruct_average_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    avg_c1 = sta.reconstruct_average(sets, r_all, symmetry="C1", pad=args.pad)
    times["reconstruct_average_c1_s"] = time.perf_counter() - t0

    box = sets[0].box
    ref = truth.true_reference_map(args.truth, voxel, box)
    # radius of apoferritin ~ 65 Å: mask at 75 Å with a 3-voxel soft edge
    mask = F.soft_sphere_mask(box, 75.0 / voxel, 3.0)
    cc = _cc(avg, ref, mask)
    cc_mirror = _cc(avg, ref[::-1], mask)
    cc_reg, shift = truth.registered_correlation(avg * mask, ref * mask, max_shift_px=3)
    freqs, fsc_truth = F.fsc(avg, ref, voxel_A=voxel, mask=mask)
    _, fsc_truth_c1 = F.fsc(avg_c1, ref, voxel_A=voxel, mask=mask)
    profile = profile_metrics(avg, ref, voxel)
    inner = slice(1, len(fsc_truth) - 1)
    worst = int(np.argmin(fsc_truth[inner])) + 1
    profile["fsc_truth_min"] = {"value": float(fsc_truth[worst]), "at_A": float(1.0 / freqs[worst])}

    # pseudo-subtomogram path on a subset (first series)
    k = min(args.subtomo_subset, sets[0].images.shape[0])
    t0 = time.perf_counter()
    vols = [sta.backproject_subtomogram(sets[0].images[i], sets[0].weights[i], sets[0].view_matrices, pad=args.pad)
            for i in range(k)]
    times["backproject_subtomogram_per_particle_s"] = (time.perf_counter() - t0) / k
    t0 = time.perf_counter()
    avg_sub = sta.average_from_subtomograms([v[0] for v in vols], [v[1] for v in vols], rots[0][:k],
                                            symmetry=args.symmetry)
    times["average_from_subtomograms_per_particle_s"] = (time.perf_counter() - t0) / k
    avg_dir_k = sta.reconstruct_average(_select(sets[0], np.arange(k)), rots[0][:k], symmetry=args.symmetry,
                                        pad=args.pad)

    # gold-standard halves: a random split over all particles
    rng = np.random.default_rng(0)
    half = rng.permutation(m_total) % 2
    halves = []
    t0 = time.perf_counter()
    for h in (0, 1):
        sel_sets, sel_rots, i = [], [], 0
        for st in sets:
            m = st.images.shape[0]
            s = half[i:i + m] == h
            sel_sets.append(_select(st, s))
            i += m
        sel_rots = r_all[half == h]
        halves.append(sta.reconstruct_average(sel_sets, sel_rots, symmetry=args.symmetry, pad=args.pad))
    times["half_maps_s"] = time.perf_counter() - t0
    _, fsc_half_unmasked = F.fsc(halves[0], halves[1], voxel_A=voxel)
    corr = F.masked_fsc_corrected(halves[0], halves[1], mask, voxel_A=voxel)

    nyq = 2 * voxel
    res = {
        "res_truth_fsc05_A": F.resolution_at(fsc_truth, freqs, 0.5),
        "res_truth_fsc0143_A": F.resolution_at(fsc_truth, freqs, 0.143),
        "res_truth_fsc05_c1_A": F.resolution_at(fsc_truth_c1, freqs, 0.5),
        "res_halves_fsc0143_unmasked_A": F.resolution_at(fsc_half_unmasked, freqs, 0.143),
        "res_halves_fsc0143_masked_A": F.resolution_at(corr["fsc_masked"], freqs, 0.143),
        "res_halves_fsc0143_corrected_A": F.resolution_at(corr["fsc_true"], freqs, 0.143),
    }
    out = {
        "project": str(args.project), "truth": str(args.truth), "binning": b, "voxel_A": voxel, "box": args.box,
        "crop": args.crop or None,
        "nyquist_A": nyq, "symmetry": args.symmetry, "ctf": args.ctf, "pad": args.pad,
        "n_particles": m_total, "n_views_used": n_views_used,
        "times": times,
        "per_particle_ms": {"extract": 1e3 * times["extract_s"] / m_total,
                            "reconstruct_average": 1e3 * times["reconstruct_average_s"] / m_total},
        "cc_truth_masked": cc, "cc_truth_mirrored_masked": cc_mirror,
        "cc_truth_registered": cc_reg, "registered_shift_zyx_px": shift,
        "cc_subtomogram_path_vs_direct": _cc(avg_sub, avg_dir_k, mask),
        "centre_profile": profile,
        **res,
        "resolution_over_nyquist": {k_: v / nyq for k_, v in res.items()},
        "fsc": {"freqs_A": freqs.tolist(), "truth": fsc_truth.tolist(), "truth_c1": fsc_truth_c1.tolist(),
                "halves_unmasked": fsc_half_unmasked.tolist(), "halves_masked": corr["fsc_masked"].tolist(),
                "halves_corrected": corr["fsc_true"].tolist()},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": sys.version.split()[0],
                    "loadavg_before": load0, "loadavg_after": os.getloadavg()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    tag = args.truth.parent.name.replace("demo_", "") or "data"
    path = args.out / f"sta_{tag}_bin{b:g}_box{args.box}_{args.symmetry}_{args.ctf}_pad{args.pad}.json"
    path.write_text(json.dumps(out, indent=1))
    print(json.dumps({k_: v for k_, v in out.items() if k_ != "fsc"}, indent=1))
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
