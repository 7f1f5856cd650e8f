"""Runs teamtomo's torch-ctf-estimation on images saved as .npy (run with the PEER's Python, not tomoguide's).

    PEER_PYTHON bench/peers/ctf_torch.py IN_DIR OUT_JSON --pixel A --voltage kV --cs mm --ac F

Writes, per image file (sorted), defocus U/V (Å), astigmatism angle and the wall time of the call.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch_ctf_estimation as tce

ap = argparse.ArgumentParser()
ap.add_argument("in_dir")
ap.add_argument("out_json")
ap.add_argument("--pixel", type=float, required=True)
ap.add_argument("--voltage", type=float, default=300.0)
ap.add_argument("--cs", type=float, default=2.7)
ap.add_argument("--ac", type=float, default=0.1)
args = ap.parse_args()
torch.set_num_threads(2)
optics = tce.OpticalParams(pixel_spacing_angstroms=args.pixel, voltage_kev=args.voltage,
                           spherical_aberration_mm=args.cs, amplitude_contrast_fraction=args.ac,
                           target_pixel_spacing_angstroms=args.pixel)
fitting = tce.CTFFittingParams(defocus_grid_resolution=(1, 1, 1), frequency_fit_range_angstroms=(30.0, 7.0),
                               defocus_range_microns=(0.5, 8.0), patch_sidelength=512)
rows = []
for f in sorted(Path(args.in_dir).glob("*.npy")):
    img = torch.from_numpy(np.load(f).astype(np.float32))
    t0 = time.perf_counter()
    _, r1, r2 = tce.estimate_ctf(img, optics, fitting, device=torch.device("cpu"))
    dt = time.perf_counter() - t0
    du, dv = r2.defocus_u, r2.defocus_v
    rows.append({"file": f.name, "defocus_u_A": None if du is None else float(du) * 1e4,
                 "defocus_v_A": None if dv is None else float(dv) * 1e4,
                 "astig_angle_deg": r2.astigmatism_angle, "seconds": dt})
Path(args.out_json).write_text(json.dumps(rows, indent=1))
