"""Benchmark (issue 17): tomoguide reconstructs REAL RELION 5 / WarpTools 2D-stack particles from their STAR poses
and is compared with RELION's reconstruction of the same particles.

    python bench/relion_particles.py [--data ../shared/data/relion5_warptools_particles] [--out bench/results]

Data (``../shared/data/relion5_warptools_particles``, see ``../shared/data/SOURCES.md``): 40 ribosomes from 4
tilt series of EMPIAR-10499 written by WarpTools as 2D stacks (37 tilts, 32 px, 12 Å/px, CTF-premultiplied), the
tomograms STAR with per-tilt ``rlnTomoProjX/Y/Z/W``, the optimisation set, and
``warptools_test_box-32_angpix-12_reconstruct.mrc`` (RELION's map, 32³, 12.0024 Å).

Steps: :func:`tomoguide.compute.io.relion_particles.read_relion_particles` (the optimisation set), then
:func:`tomoguide.compute.relion_reconstruct.reconstruct_relion_particles` (RELION 5's convention: slice of image f
at ``(P_f A_sub E)ᵀ (k, 0)``, weights ``(scale · CTF · exposure filter)²``, tomoguide's 2× oversampled insertion
with gridding correction). Measured against RELION's map: real-space correlation inside a sphere of 300 Å
diameter (radius 12.5 px), FSC (unmasked and with a soft sphere of the same radius, 2 px edge) and where it first
drops below 0.5; the same for convention variants (rotation transposed, tomogram hand mirrored, image rows
flipped, the map mirrored in z, stacks indexed by visible frame as RELION's own extraction writes them, CTF depths
from the coordinates read as binned pixels, no exposure filter, no oversampling), for the record only: the reconstruction implements the one convention above.
Writes ``OUT/relion_particles.json`` and ``OUT/relion_particles_slices.png`` (central slices side by side).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
from tomoguide.compute.fsc import fsc, lowpass, soft_sphere_mask
from tomoguide.compute.io.mrc import read_mrc
from tomoguide.compute.io.relion_particles import read_relion_particles
from tomoguide.compute.relion_reconstruct import (
    reconstruct_relion_particles,
    relion_poses,
    relion_subtilts,
)
from tomoguide.compute.sta import Reconstructor, Subtilts

OPT_SET = "warptools_test_4-tomos_10-ptcls_box-32_angpix-12_optimisation_set.star"
REF_MAP = "warptools_test_box-32_angpix-12_reconstruct.mrc"
MASK_DIAMETER_A = 300.0


def masked_correlation(a: np.ndarray, b: np.ndarray, radius_px: float) -> float:
    """Pearson correlation of two maps over the voxels within ``radius_px`` of the centre voxel ``B // 2``."""
    n = a.shape[0]
    c = np.arange(n) - n // 2
    r = np.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)
    m = r < radius_px
    x = np.asarray(a, np.float64)[m]
    y = np.asarray(b, np.float64)[m]
    x, y = x - x.mean(), y - y.mean()
    return float((x * y).sum() / np.sqrt((x * x).sum() * (y * y).sum()))


def first_below(curve: np.ndarray, freqs: np.ndarray, threshold: float) -> float | None:
    """Resolution (Å) of the last shell before the FSC first drops below ``threshold`` (shell 0 skipped);
    None when it never drops (the whole range to Nyquist agrees)."""
    for i in range(1, len(curve)):
        if curve[i] < threshold:
            return float(1.0 / freqs[i - 1]) if i > 1 else None
    return float(1.0 / freqs[-1])


def mirror(vol: np.ndarray, axis: int) -> np.ndarray:
    """The map mirrored about its centre voxel ``B // 2`` along numpy ``axis``."""
    return np.roll(np.flip(vol, axis), 1, axis=axis)


def compare(vol: np.ndarray, ref: np.ndarray, voxel_A: float) -> dict:
    radius = 0.5 * MASK_DIAMETER_A / voxel_A
    mask = soft_sphere_mask(vol.shape[0], radius, 2.0)
    freqs, curve = fsc(vol, ref, voxel_A=voxel_A)
    _, curve_m = fsc(vol, ref, voxel_A=voxel_A, mask=mask)
    return {
        "correlation_300A_mask": round(masked_correlation(vol, ref, radius), 4),
        "correlation_300A_mask_lowpass_60A": round(masked_correlation(
            np.asarray(lowpass(vol, 60.0, voxel_A)), np.asarray(lowpass(ref, 60.0, voxel_A)), radius), 4),
        "fsc_0.5_A": first_below(curve, freqs, 0.5),
        "fsc_0.5_A_masked": first_below(curve_m, freqs, 0.5),
        "fsc": [round(float(v), 4) for v in curve],
        "fsc_masked": [round(float(v), 4) for v in curve_m],
    }


def variant_maps(particles, subtilts: list[Subtilts], rots: np.ndarray, shifts: np.ndarray,
                 particles_source: Path) -> dict[str, np.ndarray]:
    """Maps of the convention variants (for the record; not what the code implements, except 'relion5')."""
    b = particles.box
    out = {}
    d = np.diag([1.0, 1.0, -1.0])

    def rebuilt(fm=lambda m: m, flip_rows=False):
        sets = []
        for s in subtilts:
            im, w = s.images, s.weights
            if flip_rows:  # image row v -> -v about the centre pixel B // 2 (weights on the un-shifted grid)
                im = np.ascontiguousarray(np.roll(im[:, :, ::-1, :], 1, axis=2))
                w = np.ascontiguousarray(w[:, :, (-np.arange(b)) % b, :])
            sets.append(Subtilts(images=im, weights=w, view_matrices=fm(s.view_matrices), views=s.views,
                                 pixel_size_A=s.pixel_size_A, defocus_A=s.defocus_A))
        return Reconstructor(sets, pad=2)

    rt = np.transpose(rots, (0, 2, 1))
    out["rotation_transposed"] = rebuilt().reconstruct(rt, shifts)
    out["tomogram_hand_mirrored"] = rebuilt(lambda m: m @ d).reconstruct(rots, shifts)
    out["image_rows_flipped"] = rebuilt(flip_rows=True).reconstruct(rots, shifts)
    out["image_rows_flipped_and_hand_mirrored"] = rebuilt(lambda m: m @ d, True).reconstruct(rots, shifts)
    # RELION's own extraction writes only the visible tilts; its reader takes stack image i for the i-th visible tilt
    q = copy.deepcopy(particles)
    for g in q.tomograms:
        for j in range(g.n_particles):
            vis = np.flatnonzero(g.visible[j])
            if vis.size < g.visible.shape[1]:
                im = g.images[j].copy()
                g.images[j] = 0.0
                g.images[j, vis] = im[np.arange(vis.size)]
    out["stack_indexed_by_visible_tilt"] = reconstruct_relion_particles(q)
    # WarpTools writes rlnCoordinateX/Y/Z in the exported (binned) pixels; RELION 5 reads tilt-series pixels
    c = read_relion_particles(particles_source, pixel_coordinates="binned")
    out["ctf_depth_from_coordinates_in_binned_pixels"] = reconstruct_relion_particles(c)
    out["no_exposure_filter"] = reconstruct_relion_particles(particles, dose_weighting=False)
    out["no_oversampling_pad1"] = reconstruct_relion_particles(particles, pad=1)
    return out


def _png_numpy(path: Path, maps: dict[str, np.ndarray]) -> None:
    """Without matplotlib: the same slices as one 8-bit grey PNG (rows xy, xz, yz; one column per map, each
    slice scaled 4x and to its own range), written with zlib."""
    import struct
    import zlib

    tiles = []
    for v in maps.values():
        c = v.shape[0] // 2
        col = []
        for sl in (v[c], v[:, c, :], v[:, :, c]):
            s = np.asarray(sl, np.float64)[::-1]
            s = (s - s.min()) / max(float(np.ptp(s)), 1e-30)
            col.append(np.pad(np.kron(s, np.ones((4, 4))), 4, constant_values=1.0))
        tiles.append(np.concatenate(col, 0))
    img = (np.concatenate(tiles, 1) * 255).astype(np.uint8)
    h, w = img.shape
    raw = b"".join(b"\x00" + img[i].tobytes() for i in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def slices_png(path: Path, maps: dict[str, np.ndarray]) -> None:
    try:
        import matplotlib
    except ImportError:
        _png_numpy(path, maps)
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(maps)
    fig, axes = plt.subplots(3, len(names), figsize=(3.2 * len(names), 9.6))
    for j, n in enumerate(names):
        v = maps[n]
        c = v.shape[0] // 2
        for i, (title, sl) in enumerate((("xy (z = B/2)", v[c]), ("xz (y = B/2)", v[:, c, :]),
                                         ("yz (x = B/2)", v[:, :, c]))):
            ax = axes[i, j]
            ax.imshow(sl, cmap="gray", origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{n}\n{title}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "relion5_warptools_particles")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args(argv)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    particles = read_relion_particles(args.data / OPT_SET)
    t_read = time.perf_counter() - t0
    ref, info = read_mrc(args.data / REF_MAP)
    ref = np.asarray(ref, np.float64)
    voxel = particles.pixel_size_A

    t0 = time.perf_counter()
    subtilts = relion_subtilts(particles)
    rots, shifts = relion_poses(particles)
    t_prep = time.perf_counter() - t0
    t0 = time.perf_counter()
    rec = Reconstructor(subtilts, pad=2)
    vol = rec.reconstruct(rots, shifts)
    t_rec = time.perf_counter() - t0
    t0 = time.perf_counter()
    vol_api = reconstruct_relion_particles(particles)
    t_api = time.perf_counter() - t0
    assert np.allclose(vol, vol_api)

    main_cmp = compare(vol, ref, voxel)
    freqs, _ = fsc(vol, ref, voxel_A=voxel)
    variants = {"relion5 (implemented)": main_cmp,
                "map_mirrored_z (reference frame z -> -z)": compare(mirror(vol, 0), ref, voxel)}
    for name, v in variant_maps(particles, subtilts, rots, shifts, args.data / OPT_SET).items():
        variants[name] = compare(v, ref, voxel)
        variants[name + " + map_mirrored_z"] = compare(mirror(v, 0), ref, voxel)
    # the agreement expected with a noise-free map from the noise of the particles themselves (half sets), for
    # both readings of rlnCoordinateX/Y/Z (RELION 5: tilt-series pixels; WarpTools writes binned pixels)
    noise_limit = {}
    for pc in ("relion", "binned"):
        pp = read_relion_particles(args.data / OPT_SET, pixel_coordinates=pc)
        rr, tt = relion_poses(pp)
        rc = Reconstructor(relion_subtilts(pp), pad=2)
        vv = rc.reconstruct(rr, tt)
        sel = np.arange(pp.n_particles) % 2 == 0
        rh = masked_correlation(rc.reconstruct(rr, tt, sel), rc.reconstruct(rr, tt, ~sel), 0.5 * MASK_DIAMETER_A / voxel)
        noise_limit[pc] = {"half_sets_correlation": round(rh, 4),
                           "expected_correlation_with_noise_free_map sqrt(2rho/(1+rho))": round(float(np.sqrt(2 * rh / (1 + rh))), 4),
                           "correlation_with_reference_direct": round(masked_correlation(vv, ref, 0.5 * MASK_DIAMETER_A / voxel), 4),
                           "correlation_with_reference_mirrored_z": round(masked_correlation(mirror(vv, 0), ref, 0.5 * MASK_DIAMETER_A / voxel), 4)}
    for ax, nm in ((2, "x"), (1, "y")):
        variants[f"map_mirrored_{nm}"] = compare(mirror(vol, ax), ref, voxel)
    variants["map_inverted (r -> -r)"] = compare(mirror(mirror(mirror(vol, 0), 1), 2), ref, voxel)
    n = particles.n_particles
    half = np.arange(n) % 2 == 0
    h1, h2 = rec.reconstruct(rots, shifts, half), rec.reconstruct(rots, shifts, ~half)
    fh, ch = fsc(h1, h2, voxel_A=voxel)
    rho = masked_correlation(h1, h2, 0.5 * MASK_DIAMETER_A / voxel)

    result = {
        "what": "tomoguide reconstruction of RELION 5 / WarpTools 2D-stack particles from their poses vs RELION's map",
        "data": str(args.data),
        "n_particles": n,
        "n_tomograms": len(particles.tomograms),
        "tilts_per_series": [int(g.visible.shape[1]) for g in particles.tomograms],
        "box_px": particles.box,
        "pixel_size_A": voxel,
        "reference_pixel_size_A": round(float(info.voxel_size_A[0]), 4) if hasattr(info, "voxel_size_A") else None,
        "ctf_premultiplied": particles.ctf_premultiplied,
        "mask": f"sphere of {MASK_DIAMETER_A:g} A diameter (radius {0.5 * MASK_DIAMETER_A / voxel:g} px) about "
                f"voxel B//2; FSC masked: the same radius with a 2 px soft edge",
        "convention": "RELION 5 (exp_model.cpp Experiment::read): image f of a particle has A_f = P_f A_sub E(rot,tilt,psi), "
                      "slice at A_f^T (k,0); tomoguide view matrix = P_f (3x3 of rlnTomoProjX/Y/Z), R = A_sub E; "
                      "shift t = -A_sub origin / pixel; weights (rlnCtfScalefactor CTF exposure)^2, defocus + "
                      "hand * pixel * depth",
        "fsc_freqs_per_A": [round(float(f), 5) for f in freqs],
        **main_cmp,
        "targets": {"correlation_300A_mask": 0.9, "fsc_0.5_at_least_to_A": 30.0},
        "targets_met": bool(main_cmp["correlation_300A_mask"] >= 0.9 and (main_cmp["fsc_0.5_A"] or 1e9) <= 30.0),
        "variants": variants,
        "half_sets_fsc (alternate particles, own data)": [round(float(v), 4) for v in ch],
        "half_sets_correlation_300A_mask": round(rho, 4),
        "noise_limited_correlation_with_a_noise_free_map": round(float(np.sqrt(2 * rho / (1 + rho))), 4),
        "noise_limited_fsc_with_a_noise_free_map (sqrt(2 FSC_half / (1 + FSC_half)))": [
            round(float(np.sqrt(max(0.0, 2 * v / (1 + v)))), 4) if v > -1 else 0.0 for v in ch],
        "noise_limit_by_coordinate_reading": noise_limit,
        "timings_s": {"read_star_and_stacks": round(t_read, 3), "subtilts_and_ctf_weights": round(t_prep, 3),
                      "reconstruct (Reconstructor init + reconstruct)": round(t_rec, 3),
                      "reconstruct_relion_particles (all, second call)": round(t_api, 3)},
        "loadavg_before": [round(x, 2) for x in load0],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "relion_particles.json").write_text(json.dumps(result, indent=1) + "\n")
    slices_png(args.out / "relion_particles_slices.png",
               {"tomoguide (RELION 5 convention)": vol, "RELION map (reference file)": ref,
                "tomoguide mirrored z": mirror(vol, 0)})
    print(json.dumps({k: result[k] for k in ("correlation_300A_mask", "correlation_300A_mask_lowpass_60A",
                                             "fsc_0.5_A", "fsc_0.5_A_masked", "targets_met", "timings_s",
                                             "half_sets_correlation_300A_mask",
                                             "noise_limited_correlation_with_a_noise_free_map",
                                             "noise_limit_by_coordinate_reading")}, indent=1))
    for name, v in variants.items():
        print(f"{name:60s} cc={v['correlation_300A_mask']:.3f} cc60={v['correlation_300A_mask_lowpass_60A']:.3f} "
              f"fsc0.5={v['fsc_0.5_A']} masked={v['fsc_0.5_A_masked']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
