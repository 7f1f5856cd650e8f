"""Benchmark of the tomogram reconstruction (tomoguide.compute.reconstruct) on synthetic data (issue 6).

Usage::

    python bench/reconstruct.py [--shape 300 1024 1024] [--n-tilts 41] [--max-tilt 60] [--sirt-iter 30]
                                [--peer-slices 16] [--peers-python /tmp/recon_peers/bin/python]
                                [--no-sirt] [--out bench/results]

Data: random Gaussian blobs (σ = 3 px) in a ``(nz, ny, nx)`` box; their **exact** line integrals (each blob
projects to a 2D Gaussian of peak ``a √(2π) σ``) in ``n_tilts`` views from ``-max`` to ``+max`` with the
tilt axis along the image Y axis and no shifts, so that 2D slice-by-slice peers see the same data.

Measured: :func:`backproject` (WBP, IMOD radial filter 0.35 / 0.035) and :func:`sirt` (``--sirt-iter``
iterations; with ``--compare-sirt-by-volume`` also its first version, one whole-volume forward and back projection
per iteration, on the same data) on the whole volume; the peak memory each allocates (``tracemalloc``: numpy's
allocations, outputs included) as a multiple of the volume, and the bench process's peak RSS (the first WBP call includes numba's compilation or cache load; the
reported time is the best of the following repeats); the correlation of each result with the true blob volume
(whole volume) and, on ``--peer-slices`` Y slices spread over the volume, with the peers.

Peers (issue 6): astra-toolbox's CPU FBP (ram-lak) and SIRT (2D parallel beam, slice by slice, the
``linear`` CPU projector) and scikit-image's ``iradon`` (ramp filter). They live in a **separate** venv
(``python3 -m venv /tmp/recon_peers && /tmp/recon_peers/bin/pip install astra-toolbox scikit-image numpy``)
and run through a helper script written to a temporary folder and started with that venv's python, so the
project's venv stays clean; a missing venv or package is reported and skipped. Peers run on the sampled
slices only; their time for the whole volume is extrapolated (per-slice time × ny) and marked so. Each
peer's slices are compared with the truth in the four orientations (identity, z flip, x flip, both) since
their image conventions differ from ours; the best one is reported with its name.

Writes ``OUT/reconstruct_<nz>x<ny>x<nx>_<n>tilts.json`` and prints a summary. The machine's load average
is recorded before and after: this workplace's 2 cores are shared, and timings scale with the load.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np

PEER_HELPER = r'''
import json, sys, time
import numpy as np
out = {}
data = np.load(sys.argv[1])
sino = data["sino"]            # (n_slices, n_angles, nx)
angles = data["angles_deg"]    # (n_angles,)
nz = int(data["nz"]); n_iter = int(data["n_iter"])
n_sl, n_ang, nx = sino.shape
try:
    import astra
    vg = astra.create_vol_geom(nz, nx)
    pg = astra.create_proj_geom("parallel", 1.0, nx, np.radians(angles))
    proj_id = astra.create_projector("linear", pg, vg)
    for algo, extra in (("FBP", {"FilterType": "ram-lak"}), ("SIRT", {})):
        rec = np.zeros((n_sl, nz, nx), np.float32)
        t0 = time.perf_counter()
        for i in range(n_sl):
            sid = astra.data2d.create("-sino", pg, sino[i])
            rid = astra.data2d.create("-vol", vg, 0)
            cfg = astra.astra_dict(algo)
            cfg["ProjectorId"] = proj_id
            cfg["ProjectionDataId"] = sid
            cfg["ReconstructionDataId"] = rid
            if extra:
                cfg["option"] = extra
            aid = astra.algorithm.create(cfg)
            astra.algorithm.run(aid, n_iter if algo == "SIRT" else 1)
            rec[i] = astra.data2d.get(rid)
            astra.algorithm.delete(aid); astra.data2d.delete(rid); astra.data2d.delete(sid)
        dt = time.perf_counter() - t0
        np.save(sys.argv[2] + f"_astra_{algo}.npy", rec)
        out[f"astra_{algo}"] = {"seconds": dt, "version": astra.__version__}
    astra.projector.delete(proj_id)
except Exception as exc:
    out["astra_error"] = f"{type(exc).__name__}: {exc}"
try:
    import skimage
    from skimage.transform import iradon
    rec = np.zeros((n_sl, nz, nx), np.float32)
    t0 = time.perf_counter()
    for i in range(n_sl):
        img = iradon(sino[i].T.astype(np.float64), theta=angles, output_size=nx, filter_name="ramp",
                     circle=False)
        c = (nx - nz) // 2
        rec[i] = img[c:c + nz]
    dt = time.perf_counter() - t0
    np.save(sys.argv[2] + "_iradon.npy", rec)
    out["skimage_iradon"] = {"seconds": dt, "version": skimage.__version__}
except Exception as exc:
    out["skimage_error"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(out))
'''


def _blob_patch(sigma: float, frac: np.ndarray, ndim: int, radius: int) -> np.ndarray:
    ax = [np.arange(-radius, radius + 1) - f for f in frac]
    grids = np.meshgrid(*ax, indexing="ij")
    return np.exp(-sum(g**2 for g in grids) / (2 * sigma**2))


def make_data(shape: tuple[int, int, int], tilts: np.ndarray, n_blobs: int, sigma: float,
              seed: int) -> tuple[np.ndarray, np.ndarray, Any]:
    """(truth volume (nz, ny, nx) float32, views (n, ny, nx) float32, geometry)."""
    from tomoguide.compute.reconstruct import simple_geometry

    rng = np.random.default_rng(seed)
    nz, ny, nx = shape
    margin = 4 * sigma
    half = np.array([nx, ny, nz]) / 2.0 - margin
    centres = rng.uniform(-half, half, (n_blobs, 3))
    amps = rng.uniform(0.5, 1.5, n_blobs)
    rad = int(math.ceil(4 * sigma))
    vol = np.zeros(shape, np.float32)
    vox = centres + np.array([(nx - 1) / 2, (ny - 1) / 2, (nz - 1) / 2])
    for (x, y, z), a in zip(vox, amps, strict=True):
        i = np.round([z, y, x]).astype(int)
        p = a * _blob_patch(sigma, np.array([z, y, x]) - i, 3, rad)
        lo = i - rad
        sl = tuple(slice(max(0, l), min(n, l + 2 * rad + 1)) for l, n in zip(lo, shape, strict=True))
        psl = tuple(slice(s.start - l, s.stop - l) for s, l in zip(sl, lo, strict=True))
        vol[sl] += p[psl]
    g = simple_geometry(tilts, (ny, nx), tilt_axis_deg=0.0)
    uv = g.project(centres)[..., :2]
    views = np.zeros((len(tilts), ny, nx), np.float32)
    peak = math.sqrt(2 * math.pi) * sigma
    for v in range(len(tilts)):
        for (u, w), a in zip(uv[v], amps, strict=True):
            i = np.round([w, u]).astype(int)
            p = a * peak * _blob_patch(sigma, np.array([w, u]) - i, 2, rad)
            lo = i - rad
            sl = tuple(slice(max(0, l), min(n, l + 2 * rad + 1)) for l, n in zip(lo, (ny, nx), strict=True))
            if any(s.stop <= s.start for s in sl):
                continue
            psl = tuple(slice(s.start - l, s.stop - l) for s, l in zip(sl, lo, strict=True))
            views[v][sl] += p[psl]
    return vol, views, g


def cc(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    a = a - a.mean()
    b = b - b.mean()
    return float(a @ b / math.sqrt((a @ a) * (b @ b)))


def cc_big(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation of two large float32 volumes, slab by slab (float64 sums)."""
    sa = sb = saa = sbb = sab = 0.0
    n = a.size
    for i in range(0, a.shape[0], 16):
        x = a[i:i + 16].astype(np.float64)
        y = b[i:i + 16].astype(np.float64)
        sa += x.sum(); sb += y.sum(); saa += (x * x).sum(); sbb += (y * y).sum(); sab += (x * y).sum()
    cov = sab - sa * sb / n
    return float(cov / math.sqrt((saa - sa * sa / n) * (sbb - sb * sb / n)))


def best_orientation(rec: np.ndarray, truth: np.ndarray) -> tuple[float, str]:
    variants = {"identity": rec, "z_flip": rec[:, ::-1], "x_flip": rec[:, :, ::-1], "zx_flip": rec[:, ::-1, ::-1]}
    scores = {k: cc(v, truth) for k, v in variants.items()}
    k = max(scores, key=lambda s: scores[s])
    return scores[k], k


def run_peers(python: str, views: np.ndarray, truth: np.ndarray, ours: dict[str, np.ndarray], slices: np.ndarray,
              tilts: np.ndarray, n_iter: int, ny: int) -> dict[str, Any]:
    if not Path(python).exists():
        return {"skipped": f"{python} not found: make the peers' venv (see this script's docstring)"}
    nz = truth.shape[0]
    with tempfile.TemporaryDirectory(prefix="recon_peers_") as tmp:
        helper = Path(tmp) / "peers.py"
        helper.write_text(PEER_HELPER)
        sino = np.ascontiguousarray(np.transpose(views[:, slices, :], (1, 0, 2)))  # (n_slices, n_angles, nx)
        np.savez(Path(tmp) / "in.npz", sino=sino, angles_deg=tilts, nz=nz, n_iter=n_iter)
        proc = subprocess.run([python, str(helper), str(Path(tmp) / "in.npz"), str(Path(tmp) / "rec")],
                              capture_output=True, text=True, timeout=3600)
        if proc.returncode != 0:
            return {"skipped": f"helper failed: {proc.stderr[-2000:]}"}
        info = json.loads(proc.stdout.strip().splitlines()[-1])
        out: dict[str, Any] = {"n_slices": int(slices.size), "slices": slices.tolist()}
        t_slices = truth[:, slices, :].transpose(1, 0, 2)  # (n_slices, nz, nx)
        for key, fname in (("astra_FBP", "rec_astra_FBP.npy"), ("astra_SIRT", "rec_astra_SIRT.npy"),
                           ("skimage_iradon", "rec_iradon.npy")):
            if key not in info:
                continue
            rec = np.load(Path(tmp) / fname)
            score, orient = best_orientation(rec, t_slices)
            rec_o = {"identity": rec, "z_flip": rec[:, ::-1], "x_flip": rec[:, :, ::-1],
                     "zx_flip": rec[:, ::-1, ::-1]}[orient]
            entry = {**info[key], "seconds_per_slice": info[key]["seconds"] / slices.size,
                     "seconds_whole_volume_extrapolated": info[key]["seconds"] / slices.size * ny,
                     "cc_truth": score, "orientation_vs_ours": orient}
            for name, vol in ours.items():
                entry[f"cc_with_ours_{name}"] = cc(rec_o, vol[:, slices, :].transpose(1, 0, 2))
            out[key] = entry
        for k in ("astra_error", "skimage_error"):
            if k in info:
                out[k] = info[k]
        return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=int, nargs=3, default=[300, 1024, 1024], metavar=("NZ", "NY", "NX"))
    ap.add_argument("--n-tilts", type=int, default=41)
    ap.add_argument("--max-tilt", type=float, default=60.0)
    ap.add_argument("--n-blobs", type=int, default=600)
    ap.add_argument("--sirt-iter", type=int, default=30)
    ap.add_argument("--no-sirt", action="store_true")
    ap.add_argument("--compare-sirt-by-volume", action="store_true",
                    help="also time the first SIRT version (whole volume per iteration) on the same data")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--peer-slices", type=int, default=16, help="Y slices given to the peers (0: no peers)")
    ap.add_argument("--peers-python", default="/tmp/recon_peers/bin/python")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args(argv)

    from tomoguide.compute import reconstruct as rec
    from tomoguide.compute.reconstruct import simple_geometry

    shape = tuple(args.shape)
    nz, ny, nx = shape
    tilts = np.linspace(-args.max_tilt, args.max_tilt, args.n_tilts)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    truth, views, g = make_data(shape, tilts, args.n_blobs, 3.0, seed=2026)
    print(f"data: {args.n_tilts} views {ny}x{nx}, volume {shape}, {args.n_blobs} blobs "
          f"({time.perf_counter() - t0:.1f} s)", flush=True)
    result: dict[str, Any] = {
        "shape_zyx": list(shape), "n_tilts": args.n_tilts, "max_tilt_deg": args.max_tilt,
        "n_blobs": args.n_blobs, "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                                             "python": sys.version.split()[0]},
    }
    import numba

    result["machine"]["numba_threads"] = numba.get_num_threads()
    vol_bytes = nz * ny * nx * 4
    t0 = time.perf_counter()
    wbp = rec.backproject(views, g, shape)
    first = time.perf_counter() - t0
    times = []
    for _ in range(args.repeats):
        del wbp
        t0 = time.perf_counter()
        wbp = rec.backproject(views, g, shape)
        times.append(time.perf_counter() - t0)
    del wbp
    tracemalloc.start()
    wbp = rec.backproject(views, g, shape)
    wbp_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    result["wbp"] = {"seconds_first_call": first, "seconds": min(times), "seconds_all": times,
                     "cc_truth": cc_big(wbp, truth), "target_seconds": 0.7,
                     "peak_bytes": wbp_peak, "peak_over_volume": wbp_peak / vol_bytes}
    print(f"WBP: {min(times):.2f} s (first call {first:.2f} s), cc with truth {result['wbp']['cc_truth']:.3f}, "
          f"peak memory {wbp_peak / vol_bytes:.2f}× the volume", flush=True)
    ours = {"wbp": wbp}
    if not args.no_sirt:
        rec.sirt(views[:, :8], simple_geometry(tilts, (8, nx)), (nz, 8, nx), n_iter=1)  # compile / load the cache
        tracemalloc.start()
        t0 = time.perf_counter()
        x = rec.sirt(views, g, shape, n_iter=args.sirt_iter)
        dt = time.perf_counter() - t0
        sirt_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        result["sirt"] = {"n_iter": args.sirt_iter, "seconds": dt, "cc_truth": cc_big(x, truth),
                          "target_seconds": 40.0, "peak_bytes": sirt_peak, "peak_over_volume": sirt_peak / vol_bytes,
                          "kernel": "slice by slice (sirt_slabs)"}
        print(f"SIRT-{args.sirt_iter}: {dt:.1f} s, cc with truth {result['sirt']['cc_truth']:.3f}, peak memory "
              f"{sirt_peak / vol_bytes:.2f}× the volume", flush=True)
        ours["sirt"] = x
        if args.compare_sirt_by_volume:
            rec.sirt(views[:, :8], simple_geometry(tilts, (8, nx)), (nz, 8, nx), n_iter=1, by_volume=True)
            tracemalloc.start()
            t0 = time.perf_counter()
            xv = rec.sirt(views, g, shape, n_iter=args.sirt_iter, by_volume=True)
            dtv = time.perf_counter() - t0
            peak_v = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            diff = max(float(np.abs(xv[i:i + 16] - x[i:i + 16]).max()) for i in range(0, nz, 16))
            result["sirt_by_volume"] = {"seconds": dtv, "ratio_by_volume_over_slabs": dtv / dt,
                                        "max_abs_diff_vs_slabs": diff, "max_abs_slabs": float(np.abs(x).max()),
                                        "peak_bytes": peak_v, "peak_over_volume": peak_v / vol_bytes,
                                        "kernel": "whole volume per iteration (the first version)"}
            print(f"SIRT-{args.sirt_iter} by volume (first version): {dtv:.1f} s ({dtv / dt:.2f}× the slab version), "
                  f"largest difference {diff:.2e}, peak memory {peak_v / vol_bytes:.2f}× the volume", flush=True)
            del xv
    if args.peer_slices > 0:
        slices = np.unique(np.linspace(ny * 0.1, ny * 0.9, args.peer_slices).astype(int))
        t_sl = truth[:, slices, :].transpose(1, 0, 2)
        result["ours_on_peer_slices"] = {k: cc(v[:, slices, :].transpose(1, 0, 2), t_sl) for k, v in ours.items()}
        print(f"peers on {slices.size} slices ...", flush=True)
        peers = run_peers(args.peers_python, views, truth, ours, slices, tilts, args.sirt_iter, ny)
        result["peers"] = peers
        for key in ("astra_FBP", "astra_SIRT", "skimage_iradon"):
            if key in peers:
                p = peers[key]
                ours_key = "sirt" if key == "astra_SIRT" else "wbp"
                if ours_key in result:
                    ours_s = result[ours_key]["seconds"]
                    p["time_ratio_peer_over_ours"] = p["seconds_whole_volume_extrapolated"] / ours_s
                print(f"{key}: {p['seconds_per_slice'] * 1000:.0f} ms/slice, whole volume ≈ "
                      f"{p['seconds_whole_volume_extrapolated']:.0f} s "
                      f"(×{p.get('time_ratio_peer_over_ours', float('nan')):.0f} ours), cc truth "
                      f"{p['cc_truth']:.3f} ({p['orientation_vs_ours']}), cc with ours "
                      + ", ".join(f"{k[13:]} {v:.3f}" for k, v in p.items() if k.startswith("cc_with_ours_")),
                      flush=True)
        if "skipped" in peers:
            print(f"peers skipped: {peers['skipped']}")
    result["load_average_before_after"] = [list(load_before), list(os.getloadavg())]
    result["peak_rss_bytes_process"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result["volume_bytes"] = vol_bytes
    print(f"peak RSS of the bench process {result['peak_rss_bytes_process'] / 1e9:.2f} GB (the truth volume, WBP and "
          f"SIRT results and the views held at once; the volume is {vol_bytes / 1e9:.2f} GB)")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"reconstruct_{nz}x{ny}x{nx}_{args.n_tilts}tilts.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
