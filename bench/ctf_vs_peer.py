"""Per-tilt CTF: tomoguide vs teamtomo's torch-ctf-estimation on the same images, both against the truth.

    python bench/ctf_vs_peer.py --dir /tmp/tomoguide-bench-small --peer-python /tmp/ctfpeer/bin/python

Uses the frame-alignment step's aligned sums of a demo project (run bench/movies_to_tilt_series.py first), fits
every tilt up to ±45° with :func:`tomoguide.compute.ctffit.estimate_ctf` (30-7 Å, 0.5-8 µm, 512 px windows, as
the step) and with the peer (same band, range and window; the peer's units converted: defocus µm → Å), and
writes ``ctf_vs_peer_<preset>.json``: time per tilt and the error of the mean defocus against the truth at the
image centre for both. The peer runs in its own environment (it needs torch + torchvision), made with
``python3 -m venv /tmp/ctfpeer && /tmp/ctfpeer/bin/pip install torch==2.14.1 torchvision==0.29.1 torch-ctf
torch-ctf-estimation mrcfile`` (about 6 GB).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import mrcfile
import numpy as np

from tomoguide.compute.ctffit import estimate_ctf
from tomoguide.compute.io.star import read_star
from tomoguide.project import Project
from tomoguide.steps.records import SeriesSet


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", required=True)
    ap.add_argument("--peer-python", required=True)
    ap.add_argument("--max-tilt", type=float, default=45.0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    work = Path(args.dir)
    with Project.open(work / "project", readonly=True) as proj:
        sset, base = SeriesSet.load(proj.output_path("motion_ctf", "series"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for s in sset.series:
            g = s.geometry
            truth = read_star(work / "truth" / s.name / f"{s.name}_tilts.star")["tilts"]
            truth = truth.set_index("rlnTomoNominalStageTiltAngle")
            with mrcfile.open(s.path("stack", base)) as m:
                stack = m.data.astype(np.float32)
            for i, tilt in enumerate(g.tilt_angles_deg):
                if abs(tilt) > args.max_tilt:
                    continue
                t0 = time.perf_counter()
                fit, _ = estimate_ctf(stack[i], pixel_size_A=g.pixel_size_binned_A, box=512,
                                      tilt_deg=float(g.true_tilt_deg()[i]), tilt_axis_deg=g.tilt_axis_deg,
                                      voltage_kV=g.optics.voltage_kV, cs_mm=g.optics.cs_mm,
                                      amplitude_contrast=g.optics.amplitude_contrast,
                                      defocus_range_A=(5000, 80000), res_range_A=(30, 7))
                dt = time.perf_counter() - t0
                t = truth.loc[tilt]
                true_mean = 0.5 * (t["tomoguideDefocusUAtImageCentre"] + t["tomoguideDefocusVAtImageCentre"])
                key = f"{s.name}_{i:03d}"
                np.save(Path(tmp) / f"{key}.npy", stack[i])
                rows.append({"key": key, "tilt": tilt, "true_mean_A": float(true_mean),
                             "ours_mean_A": fit.defocus_mean_A, "ours_s": dt})
        out_json = Path(tmp) / "peer.json"
        g = sset.series[0].geometry
        subprocess.run([args.peer_python, str(Path(__file__).parent / "peers" / "ctf_torch.py"), tmp, str(out_json),
                        "--pixel", str(g.pixel_size_binned_A), "--voltage", str(g.optics.voltage_kV),
                        "--cs", str(g.optics.cs_mm), "--ac", str(g.optics.amplitude_contrast)], check=True)
        peer = {Path(r["file"]).stem: r for r in json.loads(out_json.read_text())}
    for r in rows:
        p = peer[r["key"]]
        r["peer_mean_A"] = (0.5 * (p["defocus_u_A"] + p["defocus_v_A"]) if p["defocus_u_A"] is not None else None)
        r["peer_s"] = p["seconds"]
    ours_err = np.array([abs(r["ours_mean_A"] - r["true_mean_A"]) for r in rows])
    peer_err = np.array([abs(r["peer_mean_A"] - r["true_mean_A"]) for r in rows if r["peer_mean_A"] is not None])
    result = {
        "n_tilts": len(rows), "max_tilt_deg": args.max_tilt,
        "ours": {"median_abs_error_A": float(np.median(ours_err)), "max_abs_error_A": float(ours_err.max()),
                 "median_seconds_per_tilt": float(np.median([r["ours_s"] for r in rows]))},
        "peer_torch_ctf_estimation": {"median_abs_error_A": float(np.median(peer_err)),
                                      "max_abs_error_A": float(peer_err.max()),
                                      "median_seconds_per_tilt": float(np.median([r["peer_s"] for r in rows]))},
        "rows": rows,
    }
    result["time_ratio_peer_over_ours"] = (result["peer_torch_ctf_estimation"]["median_seconds_per_tilt"]
                                           / result["ours"]["median_seconds_per_tilt"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ctf_vs_peer_small.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
