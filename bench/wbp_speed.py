"""WBP old vs new in one run (issue 20, item 4): 41 tilts into a 300×1024×1024 tomogram by default.

    python bench/wbp_speed.py [--shape 300 1024 1024] [--n-tilts 41] [--repeats 5]
                              [--out bench/results/wbp_speed_<nz>x<ny>x<nx>_<n>tilts.json]

Data: the Gaussian blobs and their exact projections of ``bench/reconstruct.py`` (``make_data``, seed 2026).

* **old**: the pipeline of :func:`tomoguide.compute.reconstruct.backproject` as it was before this change, rebuilt
  here from the kernels kept in the module: the stack copied (``stack[views]``), :func:`sample_stretched`, then
  :func:`subtract_view_means` (a second pass), the radial filter, and the reference kernel
  :func:`backproject_lines` (two views per pass over the output row);
* **new**: :func:`backproject` now: no copy when every view is included, :func:`sample_stretched_sums` +
  :func:`subtract_means_from_sums` (the sums taken while sampling), the same filter, and
  :func:`backproject_lines_tiled` (interpolation entries per slice, eight per pass).

Old and new alternate ``--repeats`` times after one warm-up each; the best time of each and each phase's time in
the best run are kept; the outputs are compared (largest difference over the largest value) and correlated with the
true blob volume; numpy's peak allocation of each (``tracemalloc``, outputs included) over the volume's size, and
the process's peak RSS. The machine's 2 cores are shared: the load average is recorded before and after, and
only the ratio old/new of this run is meaningful.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reconstruct import cc_big, make_data  # noqa: E402  (bench/reconstruct.py)


def _old(views: np.ndarray, g: Any, shape: tuple[int, int, int], times: dict[str, float]) -> np.ndarray:
    from tomoguide.compute import backproject_numba as kern
    from tomoguide.compute import reconstruct as rec

    t = time.perf_counter()
    a = rec._as_stack(views, g)
    s = rec._setup(g, shape, shift_x_px=0.0, shift_z_px=0.0, tilt_offset_deg=0.0, axis_offset_px=0.0)
    raw = np.ascontiguousarray(a[s.views])
    lines = np.empty((s.views.size, s.n_rows, s.n_cols), dtype=np.float32)
    valid = np.empty(lines.shape, dtype=np.uint8)
    kern.sample_stretched(raw, np.ascontiguousarray(s.raw_map), lines, valid)
    kern.subtract_view_means(lines, valid)
    del raw, valid
    times["sample"] = time.perf_counter() - t
    t = time.perf_counter()
    w = rec.view_weights(s.beta_deg)
    rec._filter_lines(lines, s, w, cutoff=0.35, falloff=0.035, fake_sirt_iterations=0)
    times["filter"] = time.perf_counter() - t
    t = time.perf_counter()
    out = np.empty(shape, dtype=np.float32)
    kern.backproject_lines(lines, s.ky, s.kz, s.kc, s.ry, s.rz, s.rc, np.ones(s.views.size), out,
                           np.empty((1, 1, 1), np.float32), False)
    times["backproject"] = time.perf_counter() - t
    return out


def _new(views: np.ndarray, g: Any, shape: tuple[int, int, int], times: dict[str, float]) -> np.ndarray:
    from tomoguide.compute import backproject_numba as kern
    from tomoguide.compute import reconstruct as rec

    t = time.perf_counter()
    a = rec._as_stack(views, g)
    s = rec._setup(g, shape, shift_x_px=0.0, shift_z_px=0.0, tilt_offset_deg=0.0, axis_offset_px=0.0)
    lines, valid = rec._sample_lines(a, s, True)
    del valid
    times["sample"] = time.perf_counter() - t
    t = time.perf_counter()
    w = rec.view_weights(s.beta_deg)
    rec._filter_lines(lines, s, w, cutoff=0.35, falloff=0.035, fake_sirt_iterations=0)
    times["filter"] = time.perf_counter() - t
    t = time.perf_counter()
    out = np.empty(shape, dtype=np.float32)
    kern.backproject_lines_tiled(lines, s.ky, s.kz, s.kc, s.ry, s.rz, s.rc, np.ones(s.views.size), out,
                                 np.empty((1, 1, 1), np.float32), False)
    times["backproject"] = time.perf_counter() - t
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=int, nargs=3, default=[300, 1024, 1024], metavar=("NZ", "NY", "NX"))
    ap.add_argument("--n-tilts", type=int, default=41)
    ap.add_argument("--max-tilt", type=float, default=60.0)
    ap.add_argument("--n-blobs", type=int, default=600)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    import numba

    from tomoguide.compute import reconstruct as rec

    shape = tuple(args.shape)
    nz, ny, nx = shape
    tilts = np.linspace(-args.max_tilt, args.max_tilt, args.n_tilts)
    truth, views, g = make_data(shape, tilts, args.n_blobs, 3.0, seed=2026)
    vol_bytes = nz * ny * nx * 4
    load_before = os.getloadavg()
    result: dict[str, Any] = {
        "shape_zyx": list(shape), "n_tilts": args.n_tilts, "max_tilt_deg": args.max_tilt, "n_blobs": args.n_blobs,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0],
                    "numba_threads": numba.get_num_threads()},
        "load_before": load_before,
    }
    fns = {"old": _old, "new": _new}
    best: dict[str, float] = {k: float("inf") for k in fns}
    phases: dict[str, dict[str, float]] = {}
    all_times: dict[str, list[float]] = {k: [] for k in fns}
    outs: dict[str, np.ndarray] = {}
    for name, fn in fns.items():  # warm-up (numba compilation or cache load)
        t = time.perf_counter()
        outs[name] = fn(views, g, shape, {})
        result[f"{name}_first_call_s"] = time.perf_counter() - t
    for _ in range(args.repeats):
        for name, fn in fns.items():
            outs.pop(name, None)
            ph: dict[str, float] = {}
            t = time.perf_counter()
            outs[name] = fn(views, g, shape, ph)
            dt = time.perf_counter() - t
            all_times[name].append(dt)
            if dt < best[name]:
                best[name] = dt
                phases[name] = ph
    public = rec.backproject(views, g, shape)
    scale = float(np.abs(outs["old"]).max())
    result["max_abs_diff_new_vs_old_over_max"] = float(np.abs(outs["new"] - outs["old"]).max()) / scale
    result["max_abs_diff_backproject_vs_new_over_max"] = float(np.abs(public - outs["new"]).max()) / scale
    del public
    for name in fns:
        result[name] = {"seconds_best": best[name], "seconds_all": all_times[name], "phases_in_best_s": phases[name],
                        "cc_truth": cc_big(outs[name], truth)}
    outs.clear()
    for name, fn in fns.items():
        tracemalloc.start()
        o = fn(views, g, shape, {})
        result[name]["peak_bytes"] = tracemalloc.get_traced_memory()[1]
        result[name]["peak_over_volume"] = result[name]["peak_bytes"] / vol_bytes
        tracemalloc.stop()
        del o
    result["ratio_old_over_new"] = best["old"] / best["new"]
    result["phase_ratios_old_over_new"] = {k: phases["old"][k] / phases["new"][k] for k in phases["new"]}
    result["target_seconds"] = 0.7
    result["peak_rss_bytes_process"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result["peak_rss_over_volume_process"] = result["peak_rss_bytes_process"] / vol_bytes
    result["load_after"] = os.getloadavg()
    out = args.out or Path(__file__).resolve().parent / "results" / f"wbp_speed_{nz}x{ny}x{nx}_{args.n_tilts}tilts.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("ratio_old_over_new", "phase_ratios_old_over_new", "load_before",
                                             "load_after", "max_abs_diff_new_vs_old_over_max")}, indent=1))
    for name in fns:
        r = result[name]
        print(f"{name}: best {r['seconds_best']:.3f} s, phases {r['phases_in_best_s']}, cc {r['cc_truth']:.4f}, "
              f"peak {r['peak_over_volume']:.2f}x volume")
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
