"""SIRT's two paths (:func:`tomoguide.compute.reconstruct.sirt`) on volumes of several sizes: slice by slice (all
iterations of a block of Y slices in cache) against the whole volume per iteration, same views (41 tilts, ±60°,
random), same process, alternately; sets ``SIRT_SLABS_MIN_VOXELS``, the size from which slices are the default.

    python bench/sirt_paths.py [--sizes 170 256 400 512] [--nz 300] [--iterations 10] [--threads 2]
                               [--out bench/results/sirt_paths.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[170, 256, 400, 512])
    ap.add_argument("--nz", type=int, default=300)
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "sirt_paths.json")
    args = ap.parse_args(argv)
    from tomoguide.compute import reconstruct as rec
    from tomoguide.compute.backend import cpu_threads

    tilts = np.arange(-60.0, 60.1, 3.0)
    rng = np.random.default_rng(0)
    res: dict = {"nz": args.nz, "iterations": args.iterations, "threads": args.threads, "cpus": os.cpu_count(),
                 "load_before": os.getloadavg(), "threshold_voxels": rec.SIRT_SLABS_MIN_VOXELS, "sizes": []}
    with cpu_threads(args.threads):
        g0 = rec.simple_geometry(tilts, (16, 16))
        for bv in (False, True):  # compile / load the kernels
            rec.sirt(rng.normal(size=(41, 16, 16)).astype(np.float32), g0, (8, 16, 16), 1, by_volume=bv)
        for n in args.sizes:
            g = rec.simple_geometry(tilts, (n, n))
            st = rng.normal(size=(len(tilts), n, n)).astype(np.float32)
            t: dict[str, float] = {}
            out = {}
            for bv in (False, True):
                c = time.perf_counter()
                out[bv] = rec.sirt(st, g, (args.nz, n, n), args.iterations, by_volume=bv)
                t["by_volume" if bv else "slices"] = time.perf_counter() - c
            row = {"shape_zyx": [args.nz, n, n], "voxels": args.nz * n * n, "seconds": t,
                   "faster": min(t, key=t.__getitem__),
                   "max_abs_difference": float(np.abs(out[True] - out[False]).max()),
                   "max_abs": float(np.abs(out[False]).max())}
            res["sizes"].append(row)
            print(json.dumps(row), flush=True)
    res["load_after"] = os.getloadavg()
    args.out.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
