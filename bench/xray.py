"""Benchmark of the X-ray eraser on the simulator's data against its truth (issue 5).

Usage::

    python bench/xray.py --preset small --out bench/results [--data DIR] [--hot-pixels]

Generates the preset into ``DIR`` (default: ``<tmp>/tomoguide-bench/<preset>``, not under ``--out``: the small
preset is about 0.5 GB) unless ``DIR/truth/summary.json`` is
already there, then for every tilt movie: gain-corrected frame sum (``read_movie(path).sum(0) *
read_gain(gain, flip_x=True)``, in camera orientation, so the truth positions apply directly), X-ray
erasing with the default parameters, comparison with the truth (the X-ray hit pixels of that movie and the
hot pixels, which are bright in every tilt), timing of :func:`erase_xrays` per tilt (CPU, this machine).

Targets (issue 5): at least 99 % of the true hit pixels replaced, at most 0.01 % of the other pixels
touched. Writes ``OUT/xray_<preset>.json`` and prints a summary. There is no teamtomo peer for X-ray
erasing (torch-motion-correction and torch-ctf-estimation do not erase X-rays), so no peer comparison is run.
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
from typing import Any

import numpy as np


def _dataset(preset: str, data: Path) -> Path:
    from tomoguide import synth

    if (data / "truth" / "summary.json").is_file():
        print(f"reusing the data set in {data}")
        return data
    if preset not in synth.PRESETS:
        sys.exit(f"unknown preset {preset!r}; known: {', '.join(synth.PRESETS)}")
    print(f"generating preset {preset!r} into {data} ...", flush=True)
    t0 = time.perf_counter()
    synth.generate(data, synth.PRESETS[preset])
    print(f"  done in {time.perf_counter() - t0:.0f} s", flush=True)
    return data


def run(preset: str, out: Path, data: Path | None, hot_pixels: bool, repeats: int) -> dict[str, Any]:
    import pandas as pd

    from tomoguide.compute.io.movies import read_gain, read_movie
    from tomoguide.compute.xray import erase_xrays, erase_xrays_stack

    root = _dataset(preset, data or (Path(tempfile.gettempdir()) / "tomoguide-bench" / preset))
    data_dir, truth_dir = root / "data", root / "truth"
    gain = read_gain(data_dir / "gain.mrc", flip_x=True)
    hot = pd.read_csv(truth_dir / "hot_pixels.csv")
    hot_y, hot_x = hot["y"].to_numpy(), hot["x"].to_numpy()

    tilts: list[dict[str, Any]] = []
    totals = dict(hit_pixels=0, hit_pixels_found=0, hits=0, hits_complete=0, hot=0, hot_found=0,
                  other_pixels=0, other_touched=0)
    for ts_dir in sorted(p for p in data_dir.iterdir() if p.is_dir()):
        hits = pd.read_csv(truth_dir / ts_dir.name / f"{ts_dir.name}_xray_hits.csv")
        movies = sorted(ts_dir.glob("*.mrc")) + sorted(ts_dir.glob("*.tif*"))
        sums = np.stack([read_movie(m).sum(axis=0).astype(np.float32) * gain for m in movies])
        if hot_pixels:
            _, _, masks = erase_xrays_stack(sums, hot_pixels=True)
        for i, movie in enumerate(movies):
            img = sums[i]
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                res = erase_xrays(img)
                times.append(time.perf_counter() - t0)
            mask = masks[i] if hot_pixels else res.mask
            h = hits[hits["movie"] == movie.name]
            hy, hx = h["y"].to_numpy(), h["x"].to_numpy()
            truth = np.zeros(img.shape, dtype=bool)
            truth[hy, hx] = True
            truth[hot_y, hot_x] = True
            found = mask[hy, hx]
            events = h.groupby("frame", sort=False) if len(h) else []
            n_ev = n_ev_ok = 0
            # one hit = the pixels of one (frame, centre) event; pixels of one frame that touch belong together
            for _, g in events:
                lab = _clusters(g["y"].to_numpy(), g["x"].to_numpy())
                for k in np.unique(lab):
                    sel = lab == k
                    n_ev += 1
                    n_ev_ok += bool(mask[g["y"].to_numpy()[sel], g["x"].to_numpy()[sel]].all())
            other = ~truth
            row = dict(series=ts_dir.name, movie=movie.name, hit_pixels=int(len(h)), hit_pixels_found=int(found.sum()),
                       hits=n_ev, hits_complete=n_ev_ok, hot=int(len(hot)), hot_found=int(mask[hot_y, hot_x].sum()),
                       other_touched=int((mask & other).sum()), other_pixels=int(other.sum()),
                       patches=int(res.count), seconds=float(np.median(times)))
            tilts.append(row)
            for k in totals:
                totals[k] += row[k]
            print(f"{ts_dir.name} {movie.name:28s} hits {row['hit_pixels_found']:3d}/{row['hit_pixels']:3d} px  "
                  f"hot {row['hot_found']}/{row['hot']}  false {row['other_touched']:3d} px  "
                  f"{1000 * row['seconds']:6.1f} ms", flush=True)

    secs = np.array([t["seconds"] for t in tilts])
    n_true = totals["hit_pixels"] + totals["hot"]
    n_found = totals["hit_pixels_found"] + totals["hot_found"]
    summary = dict(
        preset=preset, data=str(root), n_tilts=len(tilts), image_shape=list(sums.shape[1:]),
        hot_pixel_search=hot_pixels,
        hit_pixel_recall=totals["hit_pixels_found"] / max(totals["hit_pixels"], 1),
        hit_event_recall=totals["hits_complete"] / max(totals["hits"], 1),
        hot_pixel_recall=totals["hot_found"] / max(totals["hot"], 1),
        true_pixel_recall=n_found / max(n_true, 1),
        false_positive_fraction=totals["other_touched"] / max(totals["other_pixels"], 1),
        seconds_per_tilt_median=float(np.median(secs)), seconds_per_tilt_mean=float(secs.mean()),
        seconds_per_tilt_max=float(secs.max()),
        targets=dict(true_pixel_recall=">= 0.99", false_positive_fraction="<= 1e-4"),
        machine=dict(cpus=os.cpu_count(), python=platform.python_version(), numpy=np.__version__),
        peer="none: teamtomo has no X-ray eraser (torch-motion-correction / torch-ctf-estimation do not erase X-rays)",
        totals=totals,
    )
    summary["passed"] = bool(summary["true_pixel_recall"] >= 0.99 and summary["false_positive_fraction"] <= 1e-4)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"xray_{preset}{'_hot' if hot_pixels else ''}.json"
    path.write_text(json.dumps(dict(summary=summary, tilts=tilts), indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k not in ("totals",)}, indent=1))
    print(f"wrote {path}")
    return summary


def _clusters(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Group pixels into 8-connected clusters (labels 0..k-1), for counting hit events."""
    lab = np.arange(len(y))
    changed = True
    while changed:
        changed = False
        for i in range(len(y)):
            for j in range(i + 1, len(y)):
                if max(abs(y[i] - y[j]), abs(x[i] - x[j])) <= 1 and lab[i] != lab[j]:
                    m = min(lab[i], lab[j])
                    lab[(lab == lab[i]) | (lab == lab[j])] = m
                    changed = True
    return lab


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="small", help="simulator preset (tiny, small)")
    ap.add_argument("--out", type=Path, default=Path("bench/results"), help="folder for the JSON result")
    ap.add_argument("--data", type=Path, default=None, help="data set folder (reused if it holds truth/summary.json, else generated there)")
    ap.add_argument("--hot-pixels", action="store_true",
                    help="also search hot pixels across the tilts of each series (erase_xrays_stack)")
    ap.add_argument("--repeats", type=int, default=3, help="timing repeats per tilt (median reported)")
    args = ap.parse_args(argv)
    s = run(args.preset, args.out, args.data, args.hot_pixels, max(1, args.repeats))
    return 0 if s["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
