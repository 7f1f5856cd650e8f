"""Benchmark of the marker-free tilt-series alignment (tomoguide.compute.align) on the simulator's data (issue 6).

Usage::

    python bench/align.py [--data /tmp/demo_small] [--preset small] [--out bench/results]
                          [--solve-rotation] [--fixed-axis] [--iterations 4] [--no-across-offsets]
                          [--series SERIES.json --truth TRUTH_DIR] [--seed N] [--scenario NAME]
                          [--start-offset DEG]

Input: the binned, normalised tilt series of the workflow's ``preprocess_for_alignment`` step (tutorial bin 10,
20 Å/px): read from ``DATA/project`` when that step has run there; otherwise the preset is simulated into
``DATA`` (unless ``DATA/truth/summary.json`` exists) and the project is run up to that step with
:func:`tomoguide.cli.run_steps`. ``--series`` (a copy of that step's ``series.json`` with its stacks) and
``--truth`` (the simulator's ``truth`` folder) read the data from elsewhere and write nothing there.
``--no-across-offsets`` fits a plain point per patch (the behaviour before the per-patch across-axis offsets;
file tag ``_noacross``). ``--seed N`` simulates the preset with another seed (another specimen and
acquisition; file tag ``_seedN``), to see how the figures scatter between specimens. ``--scenario NAME`` uses
one of ``synth.SCENARIOS`` (issue 14: other conventions, planted dark and jump views, mdoc axes off) the way a user
would, defaults only: ``tomoguide simulate --scenario NAME``, ``tomoguide new``, ``tomoguide run --until
preprocess_for_alignment`` into ``DATA`` (default ``/tmp/bench_align_NAME``; reused when there), file tag
``_NAME``. ``--start-offset DEG`` adds DEG to the import's tilt axis before aligning (a wrong start; tag
``_startDEG``).

For every series: :func:`align_tilt_series` with the tutorial's parameters (patches of 500 Å, 80 % overlap; the
views' own axis checked against the import's, rounds until the axis settles, weak views bridged), then (unless
``--no-markers``) :func:`tomoguide.compute.markers.refine_with_markers` with the align step's defaults, both
timed; the final alignment is compared with ``truth/<TS>/<TS>_geometry.json`` at the stack's binning:

* ``axis_error_deg``: fitted tilt-axis angle minus the truth's ``tilt_axis_deg`` (the acquisition's axis; the
  truth's per-view in-plane rotation errors, std ``axis_error_deg`` of the simulation, average to about it:
  ``axis_error_vs_view_mean_deg`` compares with their circular mean instead);
* ``shift_rms_px``: RMS of the per-view specimen-shift differences after removing the arbitrary global offset,
  i.e. the best 3D translation ``t`` of the specimen origin (it moves view i's shift by
  ``R(θ) [t_x cos β_i + t_z sin β_i, t_y]``); ``shift_rms_mean_removed_px`` removes only the mean 2D shift
  (which depends on where the fit put the tomogram centre, the mean patch position);
* ``mean_residual_px``: the fit's mean residual (IMOD's "residual error mean"), per view in the JSON;
* the axis bookkeeping: ``prior_axis_deg`` (the import's), ``search_axis_error_deg`` (the common-lines search
  against the truth, modulo 180°), ``start_axis_deg``, ``axis_history_deg``; ``weak_views`` and ``widened_views``
  (0-based) against the truth's planted dark and jump views (``planted_dark_views``, ``planted_jump_views``).
* diagnostics of the axis error: ``point_track_axis_error_deg``, the same model fitted to *perfect* tracks (the
  true particle centres projected with the true geometry, its per-view rotation errors included: what the model
  alone gives on this specimen); ``apparent_rotation_deg`` per view, the in-plane rotation the patch tracks ask
  for with the axis held at the truth, against ``truth_view_rotation_deg`` (the simulator's per-view errors),
  with their correlation and RMS difference at |tilt| ≤ 45° and above (tracking bias shows up there).

The patch-tracking figures are kept as ``patch_axis_error_deg``, ``patch_shift_rms_px``, ``patch_mean_residual_px``
(``n_patches`` / ``n_rejected`` and the diagnostics are the patch tracks').

Targets (issue 6): |axis error| ≤ 0.3°, shift RMS ≤ 0.5 px, mean residual < 1 px. The peer, teamtomo's
``torch-tiltxcorr`` (coarse cross-correlation only), is run when importable and skipped otherwise.
Writes ``OUT/align_<preset>.json`` and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def _project_series(data: Path, preset: str, seed: int | None = None) -> Path:
    """``series.json`` of the preprocess_for_alignment step of DATA/project (simulating/running as needed)."""
    from tomoguide.cli import run_steps
    from tomoguide.demo import prepare_demo
    from tomoguide.project import Project

    project_dir = data / "project"
    try:
        proj = Project.open(project_dir)
        path = proj.output_path("preprocess_for_alignment", "series")
        if path is not None and Path(path).is_file():
            print(f"reusing {path}")
            return Path(path)
    except Exception:  # no project there yet, or the step has not run
        pass
    print(f"preparing the {preset} data set and project in {data} ...", flush=True)
    project_dir = prepare_demo(data, preset=preset, seed=seed)
    status = run_steps(project_dir, until="preprocess_for_alignment", quiet=True)
    if status != 0:
        sys.exit(f"run_steps failed with status {status}")
    return Path(Project.open(project_dir).output_path("preprocess_for_alignment", "series"))


def _scenario_series(data: Path, name: str) -> Path:
    """``series.json`` of preprocess_for_alignment for a scenario, made with the command line and defaults only."""
    import subprocess

    from tomoguide.project import Project

    project_dir = data / "project"
    try:
        path = Project.open(project_dir).output_path("preprocess_for_alignment", "series")
        if path is not None and Path(path).is_file():
            print(f"reusing {path}")
            return Path(path)
    except Exception:  # no project there yet, or the step has not run
        pass
    cli = [sys.executable, "-m", "tomoguide"]
    if not (data / "truth" / "summary.json").is_file():
        subprocess.run(cli + ["simulate", "--scenario", name, "--out", str(data)], check=True)
    if not project_dir.exists():
        subprocess.run(cli + ["new", str(project_dir), "--movies", str(data / "data")], check=True)
    subprocess.run(cli + ["run", str(project_dir), "--until", "preprocess_for_alignment"], check=True)
    return Path(Project.open(project_dir).output_path("preprocess_for_alignment", "series"))


def offset_removed_rms(est: np.ndarray, true: np.ndarray, axis_deg: float, tilts_deg: np.ndarray) -> tuple[float, Any]:
    """RMS (px) of ``est - true`` after removing the best 3D translation of the specimen origin; and it
    (:func:`tomoguide.truth.origin_removed_shift_rms`)."""
    from tomoguide.truth import origin_removed_shift_rms

    return origin_removed_shift_rms(est, true, axis_deg, tilts_deg)


def apparent_rotations(tracks: Any, fit: Any, tilts_deg: np.ndarray, true_axis_deg: float) -> np.ndarray:
    """(n,) degrees: each view's apparent in-plane rotation about the true tilt axis, as the patch tracks see it.

    The tracks are fitted with the axis held at ``true_axis_deg`` (same model otherwise); in each view the
    along-axis part of (observed - model) is regressed on the patches' across-axis model coordinate
    ``x cos β + z sin β + c``, whose slope (radians) is the rotation that view would need. Compared with the
    simulator's per-view rotation errors it separates what the tracks measure correctly (the real rotations)
    from tracking bias. NaN for views with fewer than 3 patches.
    """
    from tomoguide.compute.align import fit_projection_model

    f = fit_projection_model(tracks.positions_px, tilts_deg, true_axis_deg, tilt_offset_deg=fit.tilt_offset_deg,
                             initial_shifts_px=fit.shifts_px, solve_axis=False,
                             across_offsets=bool(fit.solved.get("across_offsets", False)))
    a = math.radians(true_axis_deg)
    along = -(f.residuals_px @ np.array([-math.sin(a), math.cos(a)]))
    b = np.radians(np.asarray(tilts_deg) + f.tilt_offset_deg)
    c = np.nan_to_num(f.across_offsets_px) if f.across_offsets_px is not None else 0.0
    out = np.full(b.size, np.nan)
    for i in range(b.size):
        xq = f.points_px[:, 0] * math.cos(b[i]) + f.points_px[:, 2] * math.sin(b[i]) + c
        ok = np.isfinite(along[i]) & np.isfinite(xq)
        if ok.sum() >= 3:
            out[i] = math.degrees(np.polyfit(xq[ok], along[i, ok], 1)[0])
    return out


def point_track_axis_error(truth_dir: Path, name: str, truth_b: Any, tilts_deg: np.ndarray,
                           across_offsets: bool) -> float | None:
    """Axis error (degrees) of the projection-model fit to *perfect* tracks: the true particle centres projected
    with the true geometry (its per-view rotation errors included). What the model alone gives on this specimen;
    None when the truth has no particle table."""
    from tomoguide.compute.align import fit_projection_model
    from tomoguide.compute.io.star import read_particles_star

    path = truth_dir / "particles.star"
    if not path.is_file():
        return None
    parts = read_particles_star(path).particles
    parts = parts[parts["rlnTomoName"] == name]
    cols = ["rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst", "rlnCenteredCoordinateZAngst"]
    pts = parts[cols].to_numpy(dtype=np.float64) / truth_b.pixel_size_binned_A
    uv = truth_b.project(pts)[..., :2] - truth_b.image_centre_px()
    f = fit_projection_model(uv, tilts_deg, truth_b.tilt_axis_deg + 0.5, tilt_offset_deg=truth_b.tilt_offset_deg,
                             across_offsets=across_offsets)
    return float(f.tilt_axis_deg - truth_b.tilt_axis_deg)


def _peer_tiltxcorr(stack: np.ndarray, geo: Any) -> dict[str, Any]:
    try:
        import torch  # type: ignore[import-not-found]
        from torch_tiltxcorr import tiltxcorr  # type: ignore[import-not-found]
    except Exception as exc:  # not installed in the project venv
        return {"skipped": f"torch-tiltxcorr not importable ({type(exc).__name__})"}
    t0 = time.perf_counter()
    shifts = tiltxcorr(tilt_series=torch.as_tensor(stack), tilt_angles=torch.as_tensor(geo.tilt_angles_deg),
                       tilt_axis_angle=geo.tilt_axis_deg)
    return {"seconds": time.perf_counter() - t0, "shifts_yx_px": np.asarray(shifts).tolist()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("/tmp/demo_small"))
    ap.add_argument("--preset", default="small")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    ap.add_argument("--solve-rotation", action="store_true", help="also solve per-view rotations")
    ap.add_argument("--fixed-axis", action="store_true", help="keep the tilt axis at the mdoc value")
    ap.add_argument("--iterations", type=int, default=4, help="most rounds of tracking and fitting")
    ap.add_argument("--no-across-offsets", action="store_true",
                    help="fit one 3D point per patch without the per-patch across-axis offset")
    ap.add_argument("--series", type=Path, default=None, help="series.json of preprocess_for_alignment to read")
    ap.add_argument("--truth", type=Path, default=None, help="the simulator's truth folder (default DATA/truth)")
    ap.add_argument("--no-markers", action="store_true",
                    help="patch tracking only, without the refinement with particles as markers (file tag _nomarkers)")
    ap.add_argument("--seed", type=int, default=None,
                    help="simulate the preset with this seed instead of its own (another specimen; file tag _seedN)")
    ap.add_argument("--scenario", default=None, help="one of synth.SCENARIOS, set up with defaults only")
    ap.add_argument("--start-offset", type=float, default=0.0,
                    help="degrees added to the import's tilt axis before aligning (a wrong start)")
    args = ap.parse_args(argv)
    if args.scenario is not None:
        if args.data == Path("/tmp/demo_small"):
            args.data = Path(f"/tmp/bench_align_{args.scenario}")
        args.preset = args.scenario

    from tomoguide.compute.align import align_tilt_series, apply_alignment
    from tomoguide.compute.markers import refine_with_markers
    from tomoguide.steps.align import AlignParams
    from tomoguide.compute.io.mrc import read_mrc
    from tomoguide.geometry import TiltSeriesGeometry, rotation_angle_deg
    from tomoguide.steps.records import SeriesSet

    if args.series is not None:
        series_path = args.series
    elif args.scenario is not None:
        series_path = _scenario_series(args.data, args.scenario)
    else:
        series_path = _project_series(args.data, args.preset, args.seed)
    truth_dir = args.truth if args.truth is not None else args.data / "truth"
    summary_path = truth_dir / "summary.json"
    planted = json.loads(summary_path.read_text()).get("planted", {}) if summary_path.is_file() else {}
    sset, folder = SeriesSet.load(series_path)
    rows = []
    for entry in sset.series:
        geo = entry.geometry
        if args.start_offset:
            geo = geo.model_validate({**geo.model_dump(), "tilt_axis_deg": geo.tilt_axis_deg + args.start_offset})
        stack = np.asarray(read_mrc(folder / entry.files["stack"])[0], dtype=np.float32)
        t0 = time.perf_counter()
        result = align_tilt_series(stack, geo, solve_axis=not args.fixed_axis, solve_rotation=args.solve_rotation,
                                   iterations=args.iterations, across_offsets=not args.no_across_offsets)
        seconds = time.perf_counter() - t0
        truth = TiltSeriesGeometry.model_validate_json(
            (truth_dir / entry.name / f"{entry.name}_geometry.json").read_text())
        true_b = truth.at_binning(geo.binning)
        ref = true_b.specimen_shifts_px()
        patch_rms = offset_removed_rms(result.geometry.specimen_shifts_px(), ref, truth.tilt_axis_deg,
                                       true_b.true_tilt_deg())[0]
        patch_fit = result.fit
        final_geo, fit, marker_seconds, n_markers = result.geometry, result.fit, None, None
        if not args.no_markers:  # the align step's default second stage, with its default parameters
            defaults = AlignParams()
            px = geo.pixel_size_binned_A
            t2 = time.perf_counter()
            try:
                m = refine_with_markers(stack, result.geometry, diameter_px=defaults.marker_diameter_A / px,
                                        thickness_px=max(8, int(round(defaults.marker_depth_A / px))),
                                        max_count=defaults.max_markers, min_count=defaults.min_markers,
                                        solve_axis=not args.fixed_axis, solve_rotation=args.solve_rotation,
                                        view_weights=result.view_weights)
                final_geo, fit, n_markers = m.geometry, m.fit, m.n_markers
            except ValueError as exc:  # too few markers: the step keeps the patch-tracking alignment
                print(f"{entry.name}: {exc}; patch tracking kept", flush=True)
            marker_seconds = time.perf_counter() - t2
        t1 = time.perf_counter()
        apply_alignment(stack, final_geo)
        interp_seconds = time.perf_counter() - t1
        est = final_geo.specimen_shifts_px()
        rms, offset = offset_removed_rms(est, ref, truth.tilt_axis_deg, true_b.true_tilt_deg())
        d = est - ref
        d = d - d.mean(axis=0)
        view_axes = -rotation_angle_deg(truth.xf_array()[:, :, :2])
        tilts = np.asarray(geo.tilt_angles_deg)
        apparent = apparent_rotations(result.tracks, patch_fit, tilts, truth.tilt_axis_deg)
        true_rot = view_axes - truth.tilt_axis_deg
        high = np.abs(tilts) > 45.0
        dev = apparent - true_rot
        from tomoguide.compute.align import axis_difference_deg

        search = result.axis_search
        row = {
            "series": entry.name,
            "prior_axis_deg": result.prior_axis_deg,
            "search_axis_error_deg": None if search is None else axis_difference_deg(search.axis_deg,
                                                                                     truth.tilt_axis_deg),
            "search_halves_deg": None if search is None else search.halves_deg,
            "start_axis_deg": result.start_axis_deg,
            "axis_history_deg": result.axis_history_deg,
            "weak_views": [int(i) for i in result.weak_views],
            "widened_views": [int(i) for i in np.flatnonzero(result.coarse.widened)] if result.coarse is not None
            else [],
            "planted_dark_views": [int(v["view_index"]) for v in planted.get("dark_views", {}).get(entry.name, [])],
            "planted_jump_views": [int(v["view_index"]) for v in planted.get("jump_views", {}).get(entry.name, [])],
            "n_views": geo.n_views,
            "image_shape_px": list(stack.shape[1:]),
            "pixel_size_A": geo.pixel_size_binned_A,
            "seconds": seconds,
            "marker_seconds": marker_seconds,
            "n_markers": n_markers,
            "patch_tilt_axis_deg": patch_fit.tilt_axis_deg,
            "patch_axis_error_deg": axis_difference_deg(patch_fit.tilt_axis_deg, truth.tilt_axis_deg),
            "patch_shift_rms_px": patch_rms,
            "patch_mean_residual_px": patch_fit.mean_residual_px,
            "interp_seconds": interp_seconds,
            "tilt_axis_deg": fit.tilt_axis_deg,
            "truth_tilt_axis_deg": truth.tilt_axis_deg,
            "axis_error_deg": axis_difference_deg(fit.tilt_axis_deg, truth.tilt_axis_deg),
            "axis_error_vs_view_mean_deg": fit.tilt_axis_deg - float(np.mean(view_axes)),
            "shift_rms_px": rms,
            "global_offset_px": offset,
            "shift_rms_mean_removed_px": float(np.sqrt((d ** 2).sum(axis=1).mean())),
            "coarse_shift_rms_px": offset_removed_rms(result.coarse_shifts_px, ref, truth.tilt_axis_deg,
                                                      true_b.true_tilt_deg())[0],
            "mean_residual_px": fit.mean_residual_px,
            "view_residual_px": [None if not np.isfinite(v) else float(v) for v in fit.view_residual_px],
            "n_patches": result.tracks.n_patches,
            "n_rejected": int(patch_fit.rejected.sum()),
            "patch_size_px": result.tracks.patch_size_px,
            "specimen_slope_deg": fit.specimen_slope_deg,
            "truth_tilt_offset_deg": truth.tilt_offset_deg,
            "point_track_axis_error_deg": point_track_axis_error(truth_dir, entry.name, true_b, tilts,
                                                                 not args.no_across_offsets),
            "apparent_rotation_deg": [None if not np.isfinite(v) else float(v) for v in apparent],
            "truth_view_rotation_deg": true_rot.tolist(),
            "apparent_vs_truth_rotation_corr": float(np.corrcoef(apparent[np.isfinite(apparent)],
                                                                 true_rot[np.isfinite(apparent)])[0, 1]),
            "apparent_minus_truth_rms_deg_low_tilt": float(np.sqrt(np.nanmean(dev[~high] ** 2))),
            "apparent_minus_truth_rms_deg_high_tilt": float(np.sqrt(np.nanmean(dev[high] ** 2))),
            "pass": bool(abs(axis_difference_deg(fit.tilt_axis_deg, truth.tilt_axis_deg)) <= 0.3 and rms <= 0.5
                         and fit.mean_residual_px < 1.0),
            "peer_torch_tiltxcorr": _peer_tiltxcorr(stack, geo),
        }
        rows.append(row)
        if n_markers is not None:
            print(f"{entry.name} patch tracking: axis error {row['patch_axis_error_deg']:+.2f}°, shift RMS "
                  f"{patch_rms:.2f} px; then {n_markers} particles as markers in {marker_seconds:.1f} s:", flush=True)
        print(f"{entry.name}: {seconds:.1f} s; axis {fit.tilt_axis_deg:.2f}° (truth {truth.tilt_axis_deg:.2f}°, "
              f"error {row['axis_error_deg']:+.2f}°); shift RMS {rms:.2f} px (mean-removed "
              f"{row['shift_rms_mean_removed_px']:.2f}, coarse {row['coarse_shift_rms_px']:.2f}); residual mean "
              f"{fit.mean_residual_px:.2f} px; {row['n_patches']} patches, {row['n_rejected']} rejected"
              f"{'' if row['pass'] else '  [target missed]'}", flush=True)
        print(f"  axis: prior {row['prior_axis_deg']:.2f}°, search error "
              f"{'n/a' if row['search_axis_error_deg'] is None else format(row['search_axis_error_deg'], '+.2f')}°, "
              f"start {row['start_axis_deg']:.2f}°, rounds {[round(a, 2) for a in row['axis_history_deg']]}; weak views "
              f"{row['weak_views']} (planted dark {row['planted_dark_views']}), widened {row['widened_views']} "
              f"(planted jumps {row['planted_jump_views']})", flush=True)
        pt = row["point_track_axis_error_deg"]
        print(f"  perfect point tracks give {'n/a' if pt is None else f'{pt:+.2f}°'}; apparent per-view rotations vs "
              f"the truth's: r = {row['apparent_vs_truth_rotation_corr']:.2f}, RMS difference "
              f"{row['apparent_minus_truth_rms_deg_low_tilt']:.2f}° at |tilt| ≤ 45°, "
              f"{row['apparent_minus_truth_rms_deg_high_tilt']:.2f}° above", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    tag = "_rot" if args.solve_rotation else ("_fixedaxis" if args.fixed_axis else "")
    tag += "_noacross" if args.no_across_offsets else ""
    tag += "_nomarkers" if args.no_markers else ""
    tag += f"_seed{args.seed}" if args.seed is not None else ""
    tag += f"_start{args.start_offset:+g}" if args.start_offset else ""
    out = args.out / f"align_{args.preset}{tag}.json"
    out.write_text(json.dumps({
        "benchmark": "tilt-series alignment (coarse xcorr + patch tracking + projection model, then particles as "
                     "markers)",
        "data": str(args.series if args.series is not None else args.data), "preset": args.preset, "settings": {
            "patch_size_A": 500.0, "patch_overlap": 0.8, "solve_rotation": args.solve_rotation,
            "fixed_axis": args.fixed_axis, "iterations": args.iterations,
            "across_offsets": not args.no_across_offsets, "markers": not args.no_markers, "seed": args.seed,
            "scenario": args.scenario, "start_offset_deg": args.start_offset},
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "processor": platform.processor()},
        "series": rows,
    }, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
