"""Benchmark of frame alignment (tomoguide.compute.motion) on the simulator's movies against its truth.

Usage::

    python bench/motion.py --preset small --out bench/results [--data DIR] [--grid 1,1,3]
        [--temporal-spacing uniform|early] [--max-tilts N]

``--data DIR`` reuses a data set generated earlier by ``tomoguide.synth.generate`` (``DIR/truth/summary.json``
must exist); without it, or when DIR holds no data set yet, the preset is generated (into DIR, or into a
fresh folder under the system's temporary directory, whose path is printed for reuse).

Accuracy: per movie, the error of the aligning frame shifts ``(x, y)`` (px) against the truth's
``rlnMicrographShiftX/Y`` (the same convention: translate frame j by it to align it onto frame 0, frame 0 = 0).
``rms_px`` removes each movie's common offset (mean error over its frames: the reference frame of a
shift estimate is arbitrary; ours is frame 0 of the fitted trajectory, whose own error would otherwise be
added to every frame); ``rms_frame0_px`` is without that removal. Time per tilt: one ``align_movie`` call
(gain, alignment, dose-weighted sum) on movies already in memory; reading the file is timed separately.

The issue-5 target: ``rms_px`` ≤ 0.25 px on the small preset. A peer (teamtomo torch-motion-correction,
``estimate_global_motion``) is compared on the same movies only when ``--peer-python`` names the python
of a separate venv that has it (torch is large: it is not a tomoguide dependency); otherwise the script
says so and skips it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _load_or_generate(preset: str, data: Path | None) -> Path:
    from tomoguide import synth

    if data is not None and (data / "truth" / "summary.json").is_file():
        print(f"reusing the data set in {data}")
        return data
    out = data if data is not None else Path(tempfile.mkdtemp(prefix=f"tomoguide_bench_{preset}_"))
    print(f"generating the {preset!r} preset into {out} (reuse it with --data {out}) ...", flush=True)
    t0 = time.perf_counter()
    synth.generate(out, synth.PRESETS[preset])
    print(f"  generated in {time.perf_counter() - t0:.0f} s")
    return out


_PEER_SCRIPT = r"""
import json, sys, time
import mrcfile, numpy as np, torch
from torch_motion_correction import FourierFilterConfig, estimate_global_motion
torch.set_num_threads(int(sys.argv[4]))
movies, px, gain_path = json.loads(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
with mrcfile.open(gain_path, permissive=True) as m:
    gain = torch.from_numpy(np.ascontiguousarray(np.asarray(m.data, dtype=np.float32)[:, ::-1]))  # flip X
filt = FourierFilterConfig(b_factor=500.0, frequency_range=(500.0, 10.0))  # their sign: positive = low-pass
out, first = [], True
for path in movies:
    with mrcfile.open(path, permissive=True) as m:
        frames = torch.from_numpy(np.asarray(m.data).astype(np.float32)) * gain
    if first:
        estimate_global_motion(frames, pixel_spacing=px, fourier_filter=filt)
        first = False
    t0 = time.perf_counter()
    field = estimate_global_motion(frames, pixel_spacing=px, fourier_filter=filt)
    dt = time.perf_counter() - t0
    yx = field.data[:, :, 0, 0].T.numpy() / px  # (t, 2) (y, x) px
    out.append({"movie": path, "shifts_xy_px": yx[:, ::-1].tolist(), "time_s": dt})
print(json.dumps(out))
"""


def _peer_import_error(python: str | None) -> str | None:
    """``None`` when the peer (teamtomo torch-motion-correction) imports in ``python``, else why not."""
    import subprocess

    if python is None:
        try:
            import torch_motion_correction  # type: ignore[import-not-found]  # noqa: F401
        except Exception as exc:  # not installed here (torch is large): skip the comparison
            return (f"torch_motion_correction not importable ({type(exc).__name__}); peer comparison skipped "
                    "(give --peer-python /path/to/venv/bin/python of a venv that has it)")
        return None
    proc = subprocess.run([python, "-c", "import torch_motion_correction, mrcfile"], capture_output=True,
                          text=True, check=False)
    if proc.returncode:
        return f"{python} cannot import torch_motion_correction/mrcfile; peer comparison skipped"
    return None


def _run_peer(python: str, root: Path, movies_rel: list[str], px: float, threads: int) -> list[dict]:
    import subprocess

    proc = subprocess.run(
        [python, "-c", _PEER_SCRIPT, json.dumps([str(root / m) for m in movies_rel]), str(px),
         str(root / "data" / "gain.mrc"), str(threads)],
        capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _shift_errors(est: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(rms with the common offset removed, rms referred to frame 0) of shift estimates ``(n, 2)`` px."""
    err = (est - est[0]) - truth
    e0 = err - err.mean(axis=0)
    return float(np.sqrt(np.mean(np.sum(e0 * e0, axis=1)))), float(np.sqrt(np.mean(np.sum(err * err, axis=1))))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small", help="simulator preset (tiny, small)")
    ap.add_argument("--out", type=Path, default=Path("bench/results"), help="folder for the JSON result")
    ap.add_argument("--data", type=Path, default=None, help="reuse (or generate into) this data folder")
    ap.add_argument("--grid", default="1,1,3", help="motion model X,Y,temporal (tutorial 1,1,3)")
    ap.add_argument("--temporal-spacing", default="early", choices=["uniform", "early"],
                    help="temporal control points even in sqrt(time) (default) or in time (Warp)")
    ap.add_argument("--bfactor", type=float, default=-500.0, help="alignment B-factor in Å² (tutorial -500)")
    ap.add_argument("--res", default="500,10", help="alignment resolution band low,high in Å (tutorial 500,10)")
    ap.add_argument("--max-tilts", type=int, default=0, help="only the first N movies of each series (0 = all)")
    ap.add_argument("--peer-python", default=None,
                    help="python of a separate venv with torch-motion-correction (optional peer comparison)")
    args = ap.parse_args(argv)

    import starfile

    from tomoguide.compute import motion
    from tomoguide.compute.io import movies

    grid = tuple(int(v) for v in args.grid.split(","))
    res_band = tuple(float(v) for v in args.res.split(","))
    root = _load_or_generate(args.preset, args.data)
    summary = json.loads((root / "truth" / "summary.json").read_text())
    params = summary["params"]
    px = float(params["pixel_size_A"])
    dose_tilt = float(params["dose_per_tilt_e_A2"])
    gain = movies.read_gain(root / "data" / "gain.mrc", flip_x=True)  # the tutorial's "flip X"

    rows = []
    truths: dict[str, np.ndarray] = {}
    warm = False
    for ts in sorted(summary["series"]):
        tables = starfile.read(root / "truth" / ts / f"{ts}_tilts.star")
        tilts, fs = tables["tilts"], tables["frame_shifts"]
        if args.max_tilts:
            tilts = tilts.iloc[: args.max_tilts]
        for _, row in tilts.iterrows():
            name = row["rlnMicrographMovieName"]
            t0 = time.perf_counter()
            frames = movies.read_movie(root / name)
            t_read = time.perf_counter() - t0
            n = frames.shape[0]
            sel = fs[fs["rlnMicrographMovieName"] == name].sort_values("rlnMicrographFrameNumber")
            truth = sel[["rlnMicrographShiftX", "rlnMicrographShiftY"]].to_numpy(dtype=np.float64)
            truths[name] = truth
            kw = dict(pixel_size_A=px, gain=gain, bfactor_A2=args.bfactor, res_band_A=res_band, grid=grid,
                      temporal_spacing=args.temporal_spacing,
                      prior_dose_e_A2=float(row["rlnMicrographPreExposure"]), dose_per_frame_e_A2=dose_tilt / n,
                      voltage_kV=float(params["voltage_kV"]))
            if not warm:  # first call pays imports and FFT plans
                motion.align_movie(frames, **kw)
                warm = True
            t0 = time.perf_counter()
            r = motion.align_movie(frames, **kw)
            t_align = time.perf_counter() - t0
            err = r.shifts_px - truth
            e0 = err - err.mean(axis=0)
            rows.append({
                "movie": name, "tilt_deg": float(row["rlnTomoNominalStageTiltAngle"]), "n_frames": int(n),
                "true_path_px": float(np.sum(np.hypot(*np.diff(truth, axis=0).T))),
                "rms_px": float(np.sqrt(np.mean(np.sum(e0 * e0, axis=1)))),
                "rms_frame0_px": float(np.sqrt(np.mean(np.sum(err * err, axis=1)))),
                "max_px": float(np.max(np.hypot(e0[:, 0], e0[:, 1]))),
                "score": r.score, "n_iterations": r.n_iterations, "n_hot_pixels": int(len(r.hot_pixels)),
                "time_align_s": t_align, "time_read_s": t_read,
            })
            print(f"{name}: rms {rows[-1]['rms_px']:.3f} px (frame-0 ref {rows[-1]['rms_frame0_px']:.3f}), "
                  f"path {rows[-1]['true_path_px']:.1f} px, score {r.score:.3f}, {t_align:.3f} s", flush=True)

    rms = np.array([r["rms_px"] for r in rows])
    rms0 = np.array([r["rms_frame0_px"] for r in rows])
    times = np.array([r["time_align_s"] for r in rows])
    ny, nx = int(params["image_ny_px"]), int(params["image_nx_px"])

    peer: dict | str
    why = _peer_import_error(args.peer_python)
    if why is None and args.peer_python is not None:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        print(f"running the peer (torch-motion-correction estimate_global_motion, {threads} threads) ...", flush=True)
        pr = _run_peer(args.peer_python, root, [r["movie"] for r in rows], px, threads)
        p_rms, p_rms0, p_t = [], [], []
        for item, row in zip(pr, rows):
            est = np.asarray(item["shifts_xy_px"], dtype=np.float64)
            truth = truths[row["movie"]]
            # their shifts are the content displacement relative to the middle frame: aligning = minus them
            a, b = _shift_errors(-est, truth)
            p_rms.append(a)
            p_rms0.append(b)
            p_t.append(item["time_s"])
        peer = {
            "method": "torch_motion_correction.estimate_global_motion (0.6.0; integer-pixel peak, middle-frame "
                      "reference; B 500 Å² low-pass, 500-10 Å)",
            "rms_px": float(np.sqrt(np.mean(np.square(p_rms)))),
            "rms_frame0_px": float(np.sqrt(np.mean(np.square(p_rms0)))),
            "time_per_tilt_s": {"mean": float(np.mean(p_t)), "median": float(np.median(p_t))},
            "time_ratio_peer_over_tomoguide": float(np.median(p_t) / np.median(times)),
        }
    elif why is None:
        peer = "torch_motion_correction imports here but runs only through --peer-python"
    else:
        peer = why
    result = {
        "method": "tomoguide.compute.motion.align_movie",
        "preset": args.preset, "data": str(root), "grid": list(grid), "temporal_spacing": args.temporal_spacing,
        "bfactor_A2": args.bfactor, "res_band_A": list(res_band),
        "movie_shape": [int(rows[0]["n_frames"]), ny, nx] if rows else None,
        "n_movies": len(rows),
        "rms_px": float(np.sqrt(np.mean(rms**2))),
        "rms_frame0_px": float(np.sqrt(np.mean(rms0**2))),
        "worst_movie_rms_px": float(rms.max()),
        "target_rms_px": 0.25, "target_met": bool(np.sqrt(np.mean(rms**2)) <= 0.25),
        "time_per_tilt_s": {"mean": float(times.mean()), "median": float(np.median(times)),
                            "max": float(times.max())},
        "cpu_count": os.cpu_count(), "python": platform.python_version(),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "peer": peer,
        "per_movie": rows,
    }
    print(f"\nframe shifts: RMS error {result['rms_px']:.3f} px (common offset removed per movie), "
          f"{result['rms_frame0_px']:.3f} px referred to frame 0; worst movie {result['worst_movie_rms_px']:.3f} px; "
          f"target ≤ 0.25 px: {'met' if result['target_met'] else 'NOT met'}")
    print(f"time per tilt ({result['movie_shape']}): mean {times.mean():.3f} s, median {np.median(times):.3f} s "
          f"on {os.cpu_count()} cores (load average {result['load_average_1min']})")
    if isinstance(peer, dict):
        print(f"peer: RMS {peer['rms_px']:.3f} px (offset removed), {peer['rms_frame0_px']:.3f} px (frame 0); "
              f"median {peer['time_per_tilt_s']['median']:.3f} s per tilt = "
              f"{peer['time_ratio_peer_over_tomoguide']:.2f} × tomoguide's")
    else:
        print(peer)
    args.out.mkdir(parents=True, exist_ok=True)
    spacing = "" if args.temporal_spacing == "early" else f"_{args.temporal_spacing}"
    out = args.out / f"motion_{args.preset}_grid{'x'.join(map(str, grid))}{spacing}.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
