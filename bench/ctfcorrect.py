"""Benchmark of CTF correction by phase flipping in strips (tomoguide.compute.ctfcorrect, issue 6).

Usage::

    python bench/ctfcorrect.py --out bench/results [--repeats 3] [--sizes 1024 2048]

Times :func:`phase_flip` per view on random float32 views of 1024² (5.4 Å/px, EMPIAR-10164 at binning 4) and
2048² (2.7 Å/px, binning 2) pixels, defocus 3.9 µm, for an aligned view (tilt axis 0°, column strips) and a
raw view (tilt axis 85.3°, rotated strips), at tilts 30° and 60°, with IMOD's defocus tolerance (2000 Å) and
a ten times finer one (200 Å). For the 1024² aligned case at 60° it also times the slow whole-image
reference (:func:`phase_flip_reference`, one full FFT per strip) and reports the correlation of the two
results. When CuPy and a GPU are usable the same views are timed on the GPU (``gpu_s``).

Writes ``OUT/ctfcorrect.json`` (times in seconds per view, the machine) and prints a summary table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from tomoguide.compute import ctfcorrect as cc
from tomoguide.compute.backend import gpu_available

PIXEL_A = {1024: 5.4, 2048: 2.7, 4096: 1.35}


def _time(fn: Any, repeats: int) -> float:
    fn()  # warm-up (FFT plans, caches)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def run(out: Path, sizes: list[int], repeats: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    rows = []
    cp = None
    if gpu_available():
        import cupy as cp  # type: ignore[import-not-found,no-redef]
    for n in sizes:
        img = rng.normal(size=(n, n)).astype(np.float32)
        px = PIXEL_A.get(n, 5.4 * 1024 / n)
        for axis in (0.0, 85.3):
            for tilt in (30.0, 60.0):
                for tol in (2000.0, 200.0):
                    kw = dict(pixel_size_A=px, defocus_u_A=39200.0, defocus_v_A=39000.0, astig_angle_deg=-15.0,
                              tilt_deg=tilt, tilt_axis_deg=axis, defocus_tolerance_A=tol)
                    plan = cc.plan_strips((n, n), pixel_size_A=px, tilt_deg=tilt, tilt_axis_deg=axis,
                                          defocus_tolerance_A=tol)
                    row: dict[str, Any] = dict(size=n, pixel_A=px, tilt_axis_deg=axis, tilt_deg=tilt,
                                               defocus_tolerance_A=tol, n_strips=plan.n_strips,
                                               strip_width_px=round(plan.strip_width_px, 1))
                    row["cpu_s"] = _time(lambda: cc.phase_flip(img, **kw), repeats)
                    if cp is not None:
                        gimg = cp.asarray(img)

                        def gpu_call() -> None:
                            cc.phase_flip(gimg, **kw)
                            cp.cuda.Stream.null.synchronize()

                        row["gpu_s"] = _time(gpu_call, repeats)
                    if n == 1024 and axis == 0.0 and tilt == 60.0:
                        t0 = time.perf_counter()
                        ref = cc.phase_flip_reference(img, **kw)
                        row["reference_s"] = time.perf_counter() - t0
                        fast = cc.phase_flip(img, **kw).astype(np.float64)
                        a, b = fast - fast.mean(), ref - ref.mean()
                        row["corr_with_reference"] = float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))
                    rows.append(row)
                    print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                          flush=True)
    result = dict(
        method="tomoguide.compute.ctfcorrect.phase_flip",
        note="seconds per view, best of repeats after a warm-up; random float32 views",
        repeats=repeats,
        rows=rows,
        machine=dict(cpus=os.cpu_count(), python=platform.python_version(), numpy=np.__version__,
                     processor=platform.processor() or platform.machine(), gpu=cp is not None),
    )
    out.mkdir(parents=True, exist_ok=True)
    path = out / "ctfcorrect.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}")
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    run(args.out, args.sizes, args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
