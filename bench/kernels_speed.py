"""Old and new compute kernels timed on the same data in one run (issue 20, items 2-3).

    python bench/kernels_speed.py PROJECT [--repeats 3] [--out bench/results/kernels_speed.json]

``PROJECT``: a project whose steps up to ``refine_fine`` are done (e.g. ``tomoguide demo --preset small --no-gui``).
The data are the project's own: the ``extract`` particles (box 36, 8 Å voxels on the small demo) and the
``initial_model`` map for the initial model's kernels; the ``extract_fine`` particles (box 64, 4 Å) with their
carried poses and the ``reconstruct_particle`` map for the fine refinement's kernels; the ``motion_ctf`` sums for the
CTF fits. Each pair runs the first version of a kernel (kept in the modules as the test oracle) and the new one on
identical inputs, alternately, ``--repeats`` times; the best time of each is kept (the machine is shared: the load
average is recorded before and after) and the outputs are compared (largest difference relative to the largest
value).

Kernels (the hot spots of the steps' profiles, bench/results/profiles/):
* ``local_search`` (refine_fine): :func:`refine._local_scores_reference` vs :func:`refine._local_scores`, 48 particles,
  33 candidate rotations, 7 shifts, all points to 8 Å;
* ``local_search_coarse_to_fine`` (refine_fine): :func:`refine.search_poses` on the same particles and candidates
  with every candidate on every point (``coarse_keep=0``) vs its default coarse-to-fine search, all points to 6 Å;
  the "difference" is the fraction of particles whose best pose differs;
* ``global_search_sampling`` (initial_model): the reference sampled at every rotation of the 7.5° O grid,
  :func:`refine._gather_c` vs :func:`refine.sample_reference`;
* ``shift_search`` (initial_model): :func:`refine.refine_shifts_reference` vs :func:`refine.refine_shifts`, 64
  particles;
* ``insertion_coarse`` / ``insertion_fine``: the sub-tilts of 150 particles scattered into the 2× oversampled grid
  (:func:`sta._scatter_samples` vs :func:`sta._scatter_flat`, through :func:`sta._scatter`'s set-up);
* ``symmetrise_coarse`` / ``symmetrise_fine``: O symmetrisation of that grid (:func:`sta._symmetrise_points` vs
  :func:`sta._symmetrise_int`, O's operators being signed permutations, with the interleaved copy it needs);
* ``ctf_per_tilt`` (motion_ctf): what the step does per tilt, ``estimate_ctf`` + ``fit_ctf_grid`` (2×2) of
  ``app/compute/ctffit.py`` as it was at ``--old-commit`` (loaded from git into this process: two full fits, the
  tiles' own windows and fits) vs now (one set of windows, one tilt-aware fit, the grid on the shared windows); with
  the defocus of each against the simulator's truth when ``PROJECT/../truth`` exists.

``step_share``: each step's profiled time in the kernels replaced (from the "before" profiles) is not recomputed
here; the per-step ratios come from ``bench/profile_step.py`` runs of the old and new code.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def _best(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def _pair(name: str, old: Callable[[], Any], new: Callable[[], Any], repeats: int,
          compare: Callable[[Any, Any], float]) -> dict[str, Any]:
    old()  # compile / warm caches
    new()
    t_old, t_new = [], []
    out_old = out_new = None
    for _ in range(repeats):
        t, out_old = _best(old, 1)
        t_old.append(t)
        t, out_new = _best(new, 1)
        t_new.append(t)
    rec = {"old_s": min(t_old), "new_s": min(t_new), "ratio": min(t_old) / min(t_new),
           "old_all_s": t_old, "new_all_s": t_new, "max_rel_diff": float(compare(out_old, out_new))}
    print(f"{name:24s} old {rec['old_s']:8.3f} s  new {rec['new_s']:8.3f} s  ratio {rec['ratio']:5.2f}  "
          f"max rel diff {rec['max_rel_diff']:.1e}", flush=True)
    return rec


def _rel(a: Any, b: Any) -> float:
    a = np.asarray(a, np.complex128)
    b = np.asarray(b, np.complex128)
    return float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-30))


def _done_folder(project: Path, step: str, output: str) -> Path:
    from tomoguide.project import Project

    return Project.open(project).output_path(step, output)


def averaging(project: Path, repeats: int) -> dict[str, Any]:
    from tomoguide.compute import refine as RF
    from tomoguide.compute import sta as ST
    from tomoguide.compute.io.mrc import read_mrc
    from tomoguide.compute.symmetry import symmetry_matrices
    from tomoguide.steps.average_records import table_rotations
    from tomoguide.steps.extract import load_particles, load_reconstructor

    out: dict[str, Any] = {}
    # ---- fine refinement: local search on the extract_fine particles against the reconstruct_particle map
    rec, star, data, weights = load_particles(_done_folder(project, "extract_fine", "particles"))
    b = rec.box_px
    voxel = rec.voxel_A
    ref_map = read_mrc(_done_folder(project, "reconstruct_particle", "average") / "map.mrc")[0]
    ref_map = np.asarray(ref_map, np.float32)
    sel = np.arange(48)
    dft = RF.centred_fft_stack(data[:48])
    w = np.ascontiguousarray(weights[:48], np.float32)
    ref_ft = RF.prepare_reference(ref_map, RF._mask(b, voxel, 150.0))
    rots = np.ascontiguousarray(table_rotations(star.particles)[:48], np.float64)
    r_max = min(b * voxel / 8.0 + 2.0, b / 2.0 - 1.0)
    pts = RF._points(b, r_max, half=True)
    pert = RF.local_rotations(0.9, 2.0)
    deltas = RF._shift_set(0.5, 7) / b
    shifts = np.zeros((48, 3))
    x0 = np.empty((48, len(pert), 7))
    y0 = np.empty((48, len(pert)))
    x1, y1 = np.empty_like(x0), np.empty_like(y0)
    re, im = np.ascontiguousarray(ref_ft[0].real), np.ascontiguousarray(ref_ft[0].imag)
    ri = RF.reference_ri(ref_ft)
    rows = RF._point_rows(pts)
    cand = np.ascontiguousarray(rots[:, None] @ pert[None])

    def old_local() -> Any:
        RF._local_scores_reference(re, im, 2.0, dft, w, sel, rots, shifts, pert, pts, deltas, x0, y0)
        return x0.copy()

    def new_local() -> Any:
        RF._local_scores(ri, 2.0, dft, w, sel, cand, shifts, pts, rows, deltas, x1, y1)
        return x1.copy()

    out["local_search"] = _pair("local_search", old_local, new_local, repeats, _rel)
    out["local_search"].update(box=b, n_points=len(pts), n_rotations=len(pert), n_shifts=7, n_particles=48)

    # the whole local search (search_poses): every candidate on every point vs coarse to fine (all candidates on
    # the inner eighth of the points, the best 10 completed); compared: particles whose best pose differs
    r_fine = min(b * voxel / 6.0 + 2.0, b / 2.0 - 1.0)  # refine_fine's iterations after the first (6 Å)

    def search(keep: int) -> Callable[[], Any]:
        return lambda: RF.search_poses(dft, w, ref_ft, sel, rots, shifts, pert, r_fine, shift_step_px=0.5,
                                       coarse_keep=keep)[0]

    def _differ(a: Any, c: Any) -> float:
        return float(np.mean(np.abs(np.asarray(a) - np.asarray(c)).max(axis=(1, 2)) > 1e-9))

    out["local_search_coarse_to_fine"] = _pair("local_search_coarse_to_fine", search(0), search(10), repeats,
                                               _differ)
    out["local_search_coarse_to_fine"]["max_rel_diff_is"] = "fraction of particles whose best pose differs"

    # ---- insertion and symmetrisation, fine and coarse
    def insertion(tag: str, folder: Path) -> None:
        recon = load_reconstructor(folder)
        if recon is None:
            print(f"{tag}: no uncropped sub-tilts kept; insertion not timed")
            return
        _, st2, _, _ = load_particles(folder)
        rot_all = table_rotations(st2.particles)
        sel_p = np.arange(0, recon.n_particles, 2)  # one half set's worth
        slices = recon._slices(sel_p)
        mats = recon._matrices(rot_all)
        sh2 = np.zeros((len(mats), 2))
        p = recon.grid_size
        nt = ST._n_accumulators(p, 3)

        def old_ins() -> Any:
            acc = np.zeros((nt, p, p, p), np.complex128)
            aw = np.zeros((nt, p, p, p))
            ST._scatter_samples(acc, aw, recon._vals, recon._ws, recon._ku, recon._kv, mats, sh2, slices, recon.scale,
                                recon.image_px, False)
            return acc.sum(0)

        def new_ins() -> Any:
            acc = np.zeros((nt, p * p * p * 3))
            ST._scatter_flat(acc, 3, p, recon._vals, recon._ws, recon._ku, recon._kv, mats, sh2, slices, recon.scale,
                             recon.image_px, False)
            t = acc.sum(0).reshape(p, p, p, 3)
            return t[..., 0] + 1j * t[..., 1]

        out[f"insertion_{tag}"] = _pair(f"insertion_{tag}", old_ins, new_ins, repeats, _rel)
        out[f"insertion_{tag}"].update(grid=p, n_slices=len(slices), samples_per_slice=len(recon._ku))
        dg = old_ins()
        wg = np.abs(dg)
        ops = np.ascontiguousarray(symmetry_matrices("O"))
        pts_h = ST._half_space_points(p)
        ops_i = np.round(ops).astype(np.int64)
        pts_i = pts_h.astype(np.int64)

        def old_sym() -> Any:
            o_g = np.zeros(len(pts_h), np.complex128)
            o_w = np.zeros(len(pts_h))
            ST._symmetrise_points(dg, wg, ops, pts_h, o_g, o_w)
            return o_g

        def new_sym() -> Any:
            # what symmetrise_grid does for O: the interleaved grid (its copy timed too), grid points only
            g3 = np.empty((p, p, p, 3))
            g3[..., 0], g3[..., 1], g3[..., 2] = dg.real, dg.imag, wg
            res = np.empty((len(pts_h), 3))
            ST._symmetrise_int(g3.reshape(-1), 3, p, ops_i, pts_i, res)
            return res[:, 0] + 1j * res[:, 1]

        out[f"symmetrise_{tag}"] = _pair(f"symmetrise_{tag}", old_sym, new_sym, repeats, _rel)
        out[f"symmetrise_{tag}"].update(grid=p, n_points=len(pts_h), n_operators=len(ops))

    insertion("fine", _done_folder(project, "extract_fine", "particles"))
    del data, weights, dft
    # ---- initial model: global search sampling and the shift search on the extract particles
    rec, star, data, weights = load_particles(_done_folder(project, "extract", "particles"))
    b = rec.box_px
    voxel = rec.voxel_A
    im_map = read_mrc(_done_folder(project, "initial_model", "average") / "map.mrc")[0]
    ref_ft = RF.prepare_reference(np.asarray(im_map, np.float32), None)
    res1 = max(150.0 / 6.0, 2.2 * voxel, 2 * voxel * 1.05)
    r_max = b * voxel / res1
    pts = RF._points(b, min(r_max, b / 2.0 - 1.0), half=True)
    grid = RF.asymmetric_unit_grid(7.5, "O")
    rt = np.ascontiguousarray(grid.transpose(0, 2, 1))

    def old_glob() -> Any:
        a = np.empty((len(rt), len(pts)), np.complex64)
        RF._gather_c(ref_ft, np.zeros(len(rt), np.int64), 2.0, rt, np.zeros((len(rt), 3)), pts, a)
        return a

    def new_glob() -> Any:
        a3 = RF.sample_reference(ref_ft, 2.0, rt, pts)
        return a3[:, 0] + 1j * a3[:, 1]

    out["global_search_sampling"] = _pair("global_search_sampling", old_glob, new_glob, repeats, _rel)
    out["global_search_sampling"].update(box=b, n_points=len(pts), n_rotations=len(rt))
    dft = RF.centred_fft_stack(data[:64])
    rots = table_rotations(star.particles)[:64] if "rlnAngleRot" in star.particles.columns else np.repeat(
        np.eye(3)[None], 64, axis=0)
    z = np.zeros((64, 3))

    out["shift_search"] = _pair(
        "shift_search", lambda: RF.refine_shifts_reference(dft, ref_ft, np.arange(64), rots, z, z, r_max, 3.0),
        lambda: RF.refine_shifts(dft, ref_ft, np.arange(64), rots, z, z, r_max, 3.0), repeats,
        lambda a, b_: float(np.abs(np.asarray(a) - np.asarray(b_)).max()))
    out["shift_search"]["max_rel_diff_is"] = "largest shift difference, px"
    insertion("coarse", _done_folder(project, "extract", "particles"))
    return out


def _module_at(commit: str, path: str, name: str) -> Any:
    """The module ``path`` (e.g. ``app/compute/ctffit.py``) as it was at ``commit`` (``git show``), imported under
    ``name`` (its own imports resolve to the current package): the old code in the same process."""
    import importlib.util
    import subprocess
    import tempfile

    root = Path(__file__).resolve().parent.parent
    src = subprocess.run(["git", "-C", str(root), "show", f"{commit}:{path}"], capture_output=True, text=True,
                         check=True).stdout
    tmp = Path(tempfile.mkdtemp(prefix="kernels_speed_")) / f"{name}.py"
    tmp.write_text(src)
    spec = importlib.util.spec_from_file_location(name, tmp)
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules[name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def ctf(project: Path, repeats: int, n_tilts: int, old_commit: str) -> dict[str, Any]:
    from tomoguide.compute import ctffit as C
    from tomoguide.compute.io.mrc import read_mrc
    from tomoguide.compute.io.star import read_star
    from tomoguide.steps.records import SeriesSet

    sset, folder = SeriesSet.load(_done_folder(project, "motion_ctf", "series"))
    entry = sset.series[0]
    name = entry.name
    g = entry.geometry
    stack = np.asarray(read_mrc(folder / entry.files["stack"])[0], np.float32)
    true_tilts = g.true_tilt_deg()
    px = float(entry.info.get("pixel_size_A", g.pixel_size_A))
    views = np.linspace(0, stack.shape[0] - 1, n_tilts).round().astype(int)
    truth_dir = project.parent / "truth"
    truth = None
    if (truth_dir / name / f"{name}_tilts.star").is_file():
        truth = read_star(truth_dir / name / f"{name}_tilts.star")["tilts"].reset_index(drop=True)
    kw = dict(pixel_size_A=px, box=512, tilt_axis_deg=g.tilt_axis_deg, defocus_handedness=g.defocus_handedness,
              voltage_kV=g.optics.voltage_kV, cs_mm=g.optics.cs_mm, amplitude_contrast=g.optics.amplitude_contrast,
              defocus_range_A=(5000.0, 80000.0), res_range_A=(30.0, 7.0), fit_phase=False)

    c_old = _module_at(old_commit, "app/compute/ctffit.py", "ctffit_old")

    def old() -> Any:
        res = []
        for v in views:
            fit, _ = c_old.estimate_ctf(stack[v], tilt_deg=float(true_tilts[v]), **kw)
            grid = c_old.fit_ctf_grid(stack[v], grid=(2, 2), global_fit=fit, tilt_deg=float(true_tilts[v]), **kw)
            res.append((fit.defocus_mean_A, grid.tilt_from_plane_deg))
        return np.array(res)

    def new() -> Any:
        res = []
        for v in views:
            geo = dict(tilt_deg=float(true_tilts[v]), tilt_axis_deg=g.tilt_axis_deg,
                       defocus_handedness=g.defocus_handedness)
            wins = C.window_spectra(stack[v], pixel_size_A=px, box=512, **geo)
            fit, _ = C.estimate_ctf(stack[v], windows=wins, **{**kw, **geo})
            grid = C.fit_ctf_grid(stack[v], grid=(2, 2), global_fit=fit, windows=wins, **{**kw, **geo})
            res.append((fit.defocus_mean_A, grid.tilt_from_plane_deg))
        return np.array(res)

    rec = _pair("ctf_per_tilt", old, new, repeats, lambda a, b_: float(np.abs(a[:, 0] - b_[:, 0]).max()))
    rec["max_rel_diff_is"] = "largest defocus difference old vs new, Å"
    rec.update(n_tilts=len(views), tilts_deg=[float(true_tilts[v]) for v in views])
    r_old, r_new = old(), new()
    rec["defocus_old_A"] = r_old[:, 0].tolist()
    rec["defocus_new_A"] = r_new[:, 0].tolist()
    rec["grid_tilt_old_deg"] = r_old[:, 1].tolist()
    rec["grid_tilt_new_deg"] = r_new[:, 1].tolist()
    if truth is not None:
        true_mean = 0.5 * (truth["rlnDefocusU"].to_numpy() + truth["rlnDefocusV"].to_numpy())[views]
        rec["truth_mean_A"] = true_mean.tolist()
        rec["median_abs_err_old_A"] = float(np.median(np.abs(r_old[:, 0] - true_mean)))
        rec["median_abs_err_new_A"] = float(np.median(np.abs(r_new[:, 0] - true_mean)))
        rec["grid_tilt_median_abs_err_old_deg"] = float(np.nanmedian(np.abs(r_old[:, 1] - true_tilts[views])))
        rec["grid_tilt_median_abs_err_new_deg"] = float(np.nanmedian(np.abs(r_new[:, 1] - true_tilts[views])))
        print(f"  defocus vs truth (tomogram centre): median |err| old {rec['median_abs_err_old_A']:.0f} Å, new "
              f"{rec['median_abs_err_new_A']:.0f} Å; grid tilt median |err| old "
              f"{rec['grid_tilt_median_abs_err_old_deg']:.2f}°, new {rec['grid_tilt_median_abs_err_new_deg']:.2f}°")
    return rec


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("project", type=Path)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ctf-tilts", type=int, default=9)
    ap.add_argument("--only", choices=["averaging", "ctf"], default=None)
    ap.add_argument("--old-commit", default="801d4e3",
                    help="the CTF fit's old code: ctffit.py at this commit (the averaging kernels' old versions are "
                         "kept in the modules)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "kernels_speed.json")
    args = ap.parse_args()
    import numba

    load0 = os.getloadavg()
    t0 = time.perf_counter()
    res: dict[str, Any] = {"project": str(args.project), "repeats": args.repeats,
                           "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                                       "numba_threads": numba.get_num_threads()}}
    if args.only in (None, "averaging"):
        res["averaging"] = averaging(args.project, args.repeats)
    if args.only in (None, "ctf"):
        res["ctf"] = ctf(args.project, args.repeats, args.ctf_tilts, args.old_commit)
        res["ctf"]["old_code"] = f"app/compute/ctffit.py at {args.old_commit}"
    res["load_average_before"] = list(load0)
    res["load_average_after"] = list(os.getloadavg())
    res["wall_s"] = time.perf_counter() - t0
    print(f"load average before {load0[0]:.2f}, after {res['load_average_after'][0]:.2f}")
    if args.out.exists() and args.only:
        old = json.loads(args.out.read_text())
        old.update({k: v for k, v in res.items()})
        res = old
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1, default=float))
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
