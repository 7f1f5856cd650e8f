"""The finer extraction's refinement of the acquisition from the particles (``extract_fine.refine_acquisition``).

Before the particles are cut again at the finer binning, every tilt series' per-view shifts, in-plane rotations
(about the image centre, within ±:data:`MAX_ROTATION_DEG`) and defocus are refined against the ``refine`` step's
half maps (:func:`tomoguide.compute.acquisition_refine.refine_views`: each half set's particles against its own
half map, gold standard), and the corrected geometry and CTF are what the extraction then uses. The corrected
records are written into the step's run folder as a series set (``acquisition/series.json``: the geometry with the
corrected ``xf`` shifts and rotations, ``<TS>_ctf.star`` with the corrected ``rlnDefocusU/V``; the other files
hard-linked from the ``exclude`` step's) and returned as the output ``series``, which the RELION 5 export prefers
to the ``exclude`` step's.

Conventions: a view's correction puts every specimen point at ``C + Rθ (u − C) + δ`` in the raw view (``u`` its
old position, ``C`` the image centre, θ counter-clockwise in raw x, y; ``δ`` px at the geometry's binning):
``A' = A Rθ⁻¹``, ``d' = d − A Rθ⁻¹ δ`` (:func:`tomoguide.compute.acquisition_refine.apply_view_corrections`);
defocus corrections go to
``rlnDefocusU`` and ``rlnDefocusV`` (Å, underfocus positive).
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["refine_series", "corrected_geometry", "corrected_ctf_table", "run_refinement"]

_OPTICS_COLUMNS = ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnMicrographPixelSize",
                   "rlnOpticsGroup", "rlnOpticsGroupName")


MAX_ROTATION_DEG = 1.0  # the search range of each view's in-plane rotation about the image centre


def refine_series(stack_binned: np.ndarray, g: Any, ctf_table: pd.DataFrame, positions_A: np.ndarray,
                  euler_deg: np.ndarray, half_index: np.ndarray, half_maps: list[np.ndarray],
                  mask: np.ndarray | None, map_voxel_A: float, resolution_A: float, *, box_px: int,
                  fit_defocus: bool = True, progress: Any = None) -> Any:
    """Per-view corrections of one series (:class:`tomoguide.compute.acquisition_refine.ViewCorrections` over
    the geometry's non-excluded views, ``.views`` added) from its particles.

    ``stack_binned`` (n, ny, nx) the series' views at the extraction's binning, ``g`` its geometry at that
    binning, ``ctf_table`` the per-view CTF rows (view order), ``positions_A`` (m, 3) centred particle
    positions (Å), ``euler_deg`` (m, 3) RELION ZYZ, ``half_index`` (m,) 0/1, ``half_maps`` the two maps of
    ``map_voxel_A`` (their ``mask``), ``resolution_A`` their resolution, ``box_px`` the sub-tilts' box.
    Shifts in px at ``g``'s binning."""
    from tomoguide.compute import acquisition_refine as AR
    from tomoguide.compute import sta
    from tomoguide.compute.dose import attenuation
    from tomoguide.compute.euler import euler_to_matrix

    import scipy.fft

    px = float(g.pixel_size_binned_A)
    sub = sta.extract_subtilts(stack_binned, g, positions_A, box_px=box_px, ctf=None, dose_weighting=False)
    views = sub.views
    ctf = sta.ViewCTF.from_star(ctf_table)
    du, dv = np.asarray(ctf.defocus_u_A)[views], np.asarray(ctf.defocus_v_A)[views]
    pts = np.asarray(positions_A, np.float64) / px
    mean_df = 0.5 * (du + dv)[None, :] + g.defocus_offset_A(pts)[views].T
    dose = None
    if g.prior_dose_e_A2 is not None:
        f1 = scipy.fft.fftfreq(box_px) / px
        kk = np.hypot(f1[None, :], f1[:, None])
        prior = np.asarray(g.prior_dose_e_A2)[views]
        dd = np.asarray(g.dose_e_A2)[views] if g.dose_e_A2 is not None else np.zeros(views.size)
        dose = np.stack([attenuation(kk, float(p), float(d), g.optics.voltage_kV) for p, d in zip(prior, dd)])
    # shifts up to 30 Å (or 4 px), at most a quarter of the box
    max_shift = float(min(box_px / 4.0, max(4.0, 30.0 / px)))
    # each particle's predicted position in each raw view from the image centre: a view's in-plane rotation moves
    # the particles far from the centre (0.3° moves a particle 1000 px out by 5 px), and is refined with the shift
    uv = g.project(pts)[views][..., :2] - np.asarray(g.image_centre_px(), np.float64)[None, None, :]
    positions = np.transpose(uv, (1, 0, 2))  # (m, k, 2)
    res = AR.refine_views(
        sub.images, sub.view_matrices, euler_to_matrix(np.asarray(euler_deg, np.float64)), half_maps,
        np.asarray(half_index, np.int64), mean_df, pixel_size_A=px, reference_voxel_A=map_voxel_A,
        resolution_A=resolution_A, mask=mask, dose=dose, half_astig_A=0.5 * (du - dv),
        astig_angle_deg=np.asarray(ctf.astig_angle_deg)[views],
        phase_rad=None if ctf.phase_shift_rad is None else np.asarray(ctf.phase_shift_rad)[views],
        voltage_kV=g.optics.voltage_kV, cs_mm=g.optics.cs_mm, amplitude_contrast=g.optics.amplitude_contrast,
        max_shift_px=max_shift, fit_defocus=fit_defocus, positions_px=positions, max_rotation_deg=MAX_ROTATION_DEG,
        progress=progress)
    res.views = views  # type: ignore[attr-defined]
    return res


def fine_half_maps(items: list[tuple[np.ndarray, Any, pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]], *,
                   box_px: int, crop_px: int, symmetry: str, mask_diameter_A: float) -> tuple[list[np.ndarray],
                                                                                               np.ndarray, float]:
    """Half maps at the extraction's pixel size from the particles of every series, with the current poses and
    records (no search): ``items`` per series ``(stack at the binning, geometry at the binning, CTF rows,
    positions Å (m, 3), Euler angles (m, 3), half index (m,))``. The sub-tilts are CTF-premultiplied and
    dose-weighted at ``box_px`` and reconstructed (:class:`tomoguide.compute.sta.Reconstructor`, ``symmetry``)
    into ``crop_px`` boxes. Returns ``([half1, half2], soft mask, resolution Å at the phase-randomisation-
    corrected FSC 0.143)``."""
    from tomoguide.compute import fsc as F
    from tomoguide.compute import sta
    from tomoguide.compute.euler import euler_to_matrix

    sets, rots, halves = [], [], []
    for st, g, table, pos, eul, half in items:
        sub = sta.extract_subtilts(st, g, pos, box_px=box_px, crop_px=crop_px, keep_uncropped=True,
                                   ctf=sta.ViewCTF.from_star(table))
        sets.append(sub)
        rots.append(euler_to_matrix(np.asarray(eul, np.float64)))
        halves.append(np.asarray(half, np.int64))
    px = float(sets[0].pixel_size_A)
    recon = sta.Reconstructor(sets)
    del sets
    r_all, h_all = np.concatenate(rots), np.concatenate(halves)
    maps = [recon.reconstruct(r_all, select=h_all == h, symmetry=symmetry) for h in (0, 1)]
    del recon
    mask = F.soft_sphere_mask(crop_px, 0.5 * mask_diameter_A / px, 3.0)
    corr = F.masked_fsc_corrected(maps[0], maps[1], mask, voxel_A=px)
    res = float(F.resolution_at(corr["fsc_true"], corr["freqs_A"], 0.143))
    return maps, mask, res


def refine_all(series: list[dict[str, Any]], half_maps: list[np.ndarray], mask: np.ndarray | None,
               map_voxel_A: float, resolution_A: float, *, binning: float, box_px: int, crop_px: int,
               symmetry: str, mask_diameter_A: float, second_pass: bool = True,
               progress: Any = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Refine every series' per-view shifts and defocus (in memory; what ``run_refinement`` and the bench share).

    ``series``: per series a dict with ``stack`` (views at ``binning``), ``geometry`` (the record, any binning),
    ``ctf`` (CTF rows), ``positions_A``, ``euler_deg``, ``half`` (0/1). Pass 1 against ``half_maps`` (the
    refinement's, ``map_voxel_A``, ``resolution_A``); with ``second_pass``, the half maps are then reconstructed
    at the extraction's pixel size from the corrected records (:func:`fine_half_maps`: finer and sharper than
    the coarse refinement's, so the CTF's defocus shows) and every series is refined again against them, the
    corrections adding up. Returns per series ``{"geometry", "ctf", "passes": [ViewCorrections …]}`` and
    figures (``pass2_resolution_A``)."""
    out = [{"geometry": s["geometry"], "ctf": s["ctf"], "passes": []} for s in series]
    info: dict[str, Any] = {"pass1_resolution_A": float(resolution_A)}
    maps, msk, vox, res = half_maps, mask, float(map_voxel_A), float(resolution_A)
    for p in range(2 if second_pass else 1):
        if p == 1:
            items = [(s["stack"], _at(o["geometry"], binning, s["stack"]), o["ctf"], s["positions_A"],
                      s["euler_deg"], s["half"]) for s, o in zip(series, out)]
            maps, msk, res = fine_half_maps(items, box_px=box_px, crop_px=crop_px, symmetry=symmetry,
                                            mask_diameter_A=mask_diameter_A)
            vox = float(out[0]["geometry"].pixel_size_at(binning))
            info["pass2_resolution_A"] = res
        for i, (s, o) in enumerate(zip(series, out)):
            if progress is not None:
                progress((p * len(series) + i) / (len(series) * (2 if second_pass else 1)),
                         f"pass {p + 1}: series {i + 1}/{len(series)} against {res:.1f} Å half maps")
            r = refine_series(s["stack"], _at(o["geometry"], binning, s["stack"]), o["ctf"], s["positions_A"],
                              s["euler_deg"], s["half"], maps, msk, vox, res, box_px=box_px)
            o["geometry"] = corrected_geometry(o["geometry"], r.views, r.shift_px, binning, r.rotation_deg)
            o["ctf"] = corrected_ctf_table(o["ctf"], r.views, r.defocus_A)
            o["passes"].append(r)
    return out, info


def _at(g: Any, binning: float, stack: np.ndarray) -> Any:
    """``g`` at ``binning`` with the binned stack's image shape."""
    gb = g.at_binning(binning)
    if tuple(gb.image_shape_px) != tuple(stack.shape[1:]):
        gb = gb.model_validate({**gb.model_dump(), "image_shape_px": list(stack.shape[1:])})
    return gb


def corrected_geometry(g0: Any, views: np.ndarray, shift_px: np.ndarray, shift_binning: float,
                       rotation_deg: np.ndarray | None = None) -> Any:
    """``g0`` with the specimen shifts of ``views`` moved by ``shift_px`` (k, 2) px measured at ``shift_binning``
    (rescaled to ``g0``'s binning) and their projections turned by ``rotation_deg`` (k,) about the image centre
    (:func:`tomoguide.compute.acquisition_refine.apply_view_corrections`)."""
    from tomoguide.compute.acquisition_refine import apply_view_corrections

    d = np.zeros((g0.n_views, 2))
    d[np.asarray(views)] = np.asarray(shift_px, np.float64) * (shift_binning / g0.binning)
    th = None
    if rotation_deg is not None:
        th = np.zeros(g0.n_views)
        th[np.asarray(views)] = np.asarray(rotation_deg, np.float64)
    xf = apply_view_corrections(g0.xf_array(), d, th)
    return g0.model_validate({**g0.model_dump(), "xf": xf})


def corrected_ctf_table(table: pd.DataFrame, views: np.ndarray, defocus_A: np.ndarray) -> pd.DataFrame:
    """The CTF rows with ``defocus_A`` (k,) added to ``rlnDefocusU`` and ``rlnDefocusV`` of ``views``."""
    out = table.reset_index(drop=True).copy()
    add = np.zeros(len(out))
    add[np.asarray(views)] = np.asarray(defocus_A, np.float64)
    for c in ("rlnDefocusU", "rlnDefocusV"):
        out[c] = pd.to_numeric(out[c]).to_numpy(float) + add
    return out


def run_refinement(ctx: Any, sset: Any, base: Path, df: pd.DataFrame, binning: float, box_px: int, crop_px: int,
                   *, second_pass: bool = True) -> Generator[Any, None, tuple[Any, Path, dict[str, Any]]]:
    """Refine every series of ``sset`` from the particles ``df`` (re-centred, with poses and half sets) against
    the ``refine`` step's half maps, then (``second_pass``) against half maps at the extraction's binning
    (:func:`refine_all`); write the corrected series set into ``ctx``'s run folder (``acquisition/``). Yields
    progress; returns ``(corrected set, its folder, metrics)``."""
    from tomoguide.compute.io.mrc import read_mrc
    from tomoguide.compute.io.star import read_ctf_star, write_ctf_star
    from tomoguide.compute.rescale import fourier_bin
    from tomoguide.steps.average_records import AverageRecord
    from tomoguide.steps.base import Progress
    from tomoguide.steps.extract import ANGLES, PARTICLE_DIAMETER_A, _centred_positions
    from tomoguide.steps.records import SeriesEntry, SeriesSet, link_or_copy

    rec, rbase = AverageRecord.load(ctx.output("refine", "average"))
    if rec.half1 is None or rec.half2 is None or rec.resolution_A is None:
        raise ValueError("refining the acquisition needs the refinement's half maps and resolution")
    halves = [np.asarray(read_mrc(rec.path(h, rbase))[0], np.float32) for h in ("half1", "half2")]
    mask = None
    if rec.mask is not None and rec.path("mask", rbase).is_file():
        mask = np.asarray(read_mrc(rec.path("mask", rbase))[0], np.float32)
    folder = ctx.mkdir("acquisition")
    names = df["rlnTomoName"].astype(str).to_numpy()
    tables = {s.name: read_ctf_star(s.path("ctf_star", base)) for s in sset.series}
    todo, used = [], []
    for si, s in enumerate(sset.series):
        rows = np.flatnonzero(names == s.name)
        if rows.size == 0:
            continue
        ctx.check_cancel()
        yield Progress(0.1 * si / len(sset.series), f"{s.name}: binning the tilt images by {binning:g}")
        g0 = s.geometry
        st = np.asarray(read_mrc(s.path("stack", base))[0], np.float32)
        if abs(binning / g0.binning - 1) > 1e-6:
            st = fourier_bin(st, binning / g0.binning)
        sub = df.iloc[rows]
        half = (sub["rlnRandomSubset"].to_numpy(np.int64) - 1 if "rlnRandomSubset" in sub.columns
                else np.arange(rows.size) % 2)
        todo.append({"stack": st, "geometry": g0, "ctf": tables[s.name], "positions_A": _centred_positions(sub),
                     "euler_deg": sub[list(ANGLES)].to_numpy(np.float64), "half": np.clip(half, 0, 1)})
        used.append(s.name)
    msgs: list[tuple[float, str]] = []
    results, info = refine_all(todo, halves, mask, rec.voxel_A, float(rec.resolution_A), binning=binning,
                               box_px=box_px, crop_px=crop_px, symmetry=rec.symmetry,
                               mask_diameter_A=PARTICLE_DIAMETER_A, second_pass=second_pass,
                               progress=lambda f, m: msgs.append((f, m)))
    yield Progress(0.95, "acquisition refined")
    del todo
    metrics: dict[str, Any] = {"resolution_used_A": [round(info["pass1_resolution_A"], 2)]
                               + ([round(info["pass2_resolution_A"], 2)] if "pass2_resolution_A" in info else []),
                               "series": {}}
    by_name = dict(zip(used, results))
    entries = []
    for s in sset.series:
        g0, table = s.geometry, tables[s.name]
        files = {}
        for role, rel in s.files.items():
            if role == "ctf_star":
                continue
            files[role] = f"{s.name}_{role}{Path(rel).suffix}"
            link_or_copy(s.path(role, base), ctx.out_path(f"acquisition/{files[role]}"))
        new_g, new_table = g0, table
        if s.name in by_name:
            r = by_name[s.name]
            new_g, new_table = r["geometry"], r["ctf"]
            views = g0.included_views()
            sh_A = (new_g.specimen_shifts_px() - g0.specimen_shifts_px())[views] * g0.pixel_size_binned_A
            ddf = (pd.to_numeric(new_table["rlnDefocusU"]).to_numpy(float)
                   - pd.to_numeric(table["rlnDefocusU"]).to_numpy(float))[views]
            last = r["passes"][-1]
            m = {"n_particles": int(last.n_particles), "views": int(views.size),
                 "views_refined": int(max(p.refined.sum() for p in r["passes"])),
                 "views_defocus_refined": int(np.sum(np.any([p.refined_defocus for p in r["passes"]], axis=0))),
                 "shift_A": [[round(float(a), 2), round(float(b), 2)] for a, b in sh_A],
                 "defocus_change_A": [round(float(x), 1) for x in ddf],
                 "z_score": [round(float(x), 1) for x in last.z_score],
                 "z_defocus": [round(float(x), 1) for x in last.z_defocus],
                 "fom_before": [round(float(x), 4) for x in r["passes"][0].fom_before],
                 "fom_after": [round(float(x), 4) for x in last.fom_after],
                 "shift_rms_A": float(np.sqrt(np.mean(np.sum(sh_A ** 2, axis=1)))),
                 "defocus_change_median_abs_A": float(np.median(np.abs(ddf))),
                 "rotation_deg": [round(float(x), 3) for x in np.sum(
                     [p.rotation_deg if p.rotation_deg is not None else np.zeros(views.size)
                      for p in r["passes"]], axis=0)],
                 "views_rotated": int(np.sum(np.any([p.rotation_deg != 0 for p in r["passes"]
                                                     if p.rotation_deg is not None], axis=0)))}
            m["rotation_rms_deg"] = float(np.sqrt(np.mean(np.square(m["rotation_deg"]))))
            metrics["series"][s.name] = m
            ctx.log(f"{s.name}: {m['views_refined']}/{m['views']} views re-aligned from {m['n_particles']} particles "
                    f"(shift RMS {m['shift_rms_A']:.2f} Å), turned in-plane {m['views_rotated']} (rotation RMS "
                    f"{m['rotation_rms_deg']:.2f}°), defocus changed in {m['views_defocus_refined']} "
                    f"(median |change| {m['defocus_change_median_abs_A']:.0f} Å); half maps of "
                    f"{', '.join(f'{x:.1f}' for x in metrics['resolution_used_A'])} Å; views whose particles' "
                    "signal is not significant keep their values")
        files["ctf_star"] = f"{s.name}_ctf.star"
        opt = {c: table[c].iloc[0] for c in _OPTICS_COLUMNS if c in table.columns}
        write_ctf_star(ctx.out_path(f"acquisition/{files['ctf_star']}"),
                       new_table[[c for c in new_table.columns if c not in _OPTICS_COLUMNS]], optics=opt or None)
        entries.append(SeriesEntry(name=s.name, geometry=new_g, files=files, flags=s.flags,
                                   info={**s.info, "acquisition_refined": True}))
    out = SeriesSet(series=entries)
    path = out.save(folder)
    return out, path.parent, metrics
