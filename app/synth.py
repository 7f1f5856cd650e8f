"""Synthetic apoferritin tilt-series acquisition with ground truth: the demo data and the test oracle.

:func:`generate` writes, like a SerialEM session plus a separate truth folder::

    out_dir/data/gain.mrc                     gain reference (float32), stored FLIPPED IN X (as the
                                              tutorial's): corrected = raw × gain_file[:, ::-1]
    out_dir/data/<TS>/<TS>_<NNN>_<angle>.mrc  movies, one per tilt (int8 counts 0..127, MRC mode 0,
                                              an image stack of n_frames); .tif (uint8, zlib) with
                                              movie_format="tiff". NNN = acquisition order (000 first).
    out_dir/data/<TS>/<TS>.mdoc               SerialEM mdoc, [ZValue] sections in acquisition order
    out_dir/truth/summary.json                every convention and number (read it first)
    out_dir/truth/apoferritin.mrc             the reference map (V) at the data pixel size, centre n // 2
    out_dir/truth/particles.star              RELION 5 particles of all series (Å, tomogram frame)
    out_dir/truth/distractors.csv             non-apoferritin objects (centre Å, radius, kind)
    out_dir/truth/hot_pixels.csv              hot pixels (y, x) in the raw (movie) orientation
    out_dir/truth/<TS>/<TS>_tilts.star        per-tilt truth (angle order) + frame shifts
    out_dir/truth/<TS>/<TS>.xf, <TS>.tlt      true IMOD alignment (raw → aligned, unbinned px; true tilts)
    out_dir/truth/<TS>/<TS>_geometry.json     the true tomoguide.geometry.TiltSeriesGeometry
    out_dir/truth/<TS>/<TS>_xray_hits.csv     X-ray hit pixels (movie, frame, y, x, counts)
    out_dir/truth/<TS>/<TS>_specimen_bin<B>.mrc   true specimen potential (V) binned B×

All physics lives in :mod:`tomoguide.compute.simulate` (see its docstring for the image model). Everything
is deterministic for ``SimParams.seed``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field
from scipy.spatial.transform import Rotation

from tomoguide.compute import simulate, specimen
from tomoguide.compute.euler import matrix_to_euler
from tomoguide.compute.io import imod, mdoc, movies, mrc, star

__all__ = ["SimParams", "PRESETS", "SynthSummary", "generate"]

APOFERRITIN_RADIUS_A = 68.0  # atoms lie between 37 and 68 Å from the centre (7A4M 24-mer)


def _f(default: Any, unit: str, help_text: str, **kw: Any) -> Any:
    return Field(default, description=help_text, json_schema_extra={"unit": unit}, **kw)


class SimParams(BaseModel):
    """Every number of the simulated acquisition. Units in each field's ``unit`` (json_schema_extra)."""

    model_config = ConfigDict(extra="forbid")

    seed: int = _f(2026, "", "Random seed: the same seed gives the same data, bit for bit.")
    n_series: int = _f(2, "", "Number of tilt series (named TS_01, TS_02, ...).", ge=1, le=99)
    image_nx_px: int = _f(1024, "px", "Image width (columns) of the camera.", ge=64)
    image_ny_px: int = _f(1024, "px", "Image height (rows) of the camera.", ge=64)
    pixel_size_A: float = _f(2.0, "Å", "Pixel size of the movies.", gt=0.3, le=20.0)
    n_frames: int = _f(6, "", "Frames per tilt movie.", ge=1, le=100)
    movie_format: Literal["mrc", "tiff"] = _f("mrc", "", "Movie file format: MRC stacks or multi-page TIFF.")
    # tilt scheme
    max_tilt_deg: float = _f(60.0, "°", "Largest tilt (the scheme runs from -max to +max).", gt=0, le=80)
    tilt_step_deg: float = _f(3.0, "°", "Tilt increment.", gt=0, le=30)
    first_group: int = _f(1, "", "Tilts on the + side right after 0° (1: the TS_01 order 0, 3, -3, -6, 6, ...).",
                          ge=1)
    group_size: int = _f(2, "", "Tilts per side in each later block of the dose-symmetric scheme.", ge=1)
    tilt_axis_deg: float = _f(85.0, "°", "Tilt-axis angle in the raw image, from +Y, counter-clockwise.")
    tilt_offset_deg: float = _f(0.8, "°", "True tilt minus nominal (stage) tilt.")
    axis_error_deg: float = _f(0.3, "°", "Std. dev. of the per-view in-plane rotation error.", ge=0)
    shift_sigma_A: float = _f(60.0, "Å", "Std. dev. of the per-view specimen shift (random part).", ge=0)
    shift_walk_A: float = _f(15.0, "Å", "Std. dev. of the per-view step of the specimen's random walk.", ge=0)
    # dose and optics
    dose_per_tilt_e_A2: float = _f(3.0, "e⁻/Å²", "Electron exposure per tilt (all frames).", gt=0)
    voltage_kV: float = _f(300.0, "kV", "Acceleration voltage.", ge=200, le=300)
    cs_mm: float = _f(2.7, "mm", "Spherical aberration.", ge=0)
    amplitude_contrast: float = _f(0.1, "", "Amplitude contrast fraction.", ge=0, lt=1)
    nominal_defocus_um: float = _f(4.0, "µm", "Target defocus (underfocus positive).", gt=0.2, le=15)
    defocus_sigma_A: float = _f(1500.0, "Å", "Std. dev. of the true defocus around the target.", ge=0)
    astigmatism_A: float = _f(400.0, "Å", "Typical defocus difference U - V.", ge=0)
    defocus_handedness: Literal[1, -1] = _f(1, "", "Sign of the defocus change with depth (geometry.py).")
    bfactor_A2: float = _f(120.0, "Å²", "Envelope exp(-B k²/4) of the images (coherence, motion, detector).",
                           ge=0)
    drift_A: float = _f(8.0, "Å", "Typical beam-induced drift over one movie.", ge=0)
    # specimen
    n_particles: int = _f(150, "", "Apoferritin particles per tilt series.", ge=0)
    slab_thickness_A: float = _f(700.0, "Å", "Ice thickness (normal to the grid).", gt=150)
    slab_tilt_x_deg: float = _f(2.0, "°", "Tilt of the ice slab about X (pre-tilt of the lamella/grid).")
    slab_tilt_y_deg: float = _f(-3.0, "°", "Tilt of the ice slab about Y (the tilt axis).")
    field_fraction: float = _f(0.92, "", "Side of the particle field as a fraction of the image side.",
                               gt=0.1, le=2.0)
    n_globular_distractors: int = _f(4, "", "Non-apoferritin globular proteins per series.", ge=0)
    n_contamination: int = _f(1, "", "Dense contamination blobs per series.", ge=0)
    carbon_thickness_A: float = _f(0.0, "Å", "Thin carbon film on the ice (0 = none).", ge=0)
    ice_excess: float = _f(0.4, "", "Excess of the ice structure factor over ideal water from ~1/40 Å⁻¹ on "
                           "(0 = ideal water; the extra fluctuations of real specimens that make Thon rings).",
                           ge=0)
    solvent_contrast: bool = _f(True, "", "Subtract the displaced ice potential from particles (realistic, "
                                "lower low-resolution contrast).")
    layer_thickness_A: float = _f(150.0, "Å", "Depth step of the defocus layers (defocus error <= half of it).",
                                  gt=5)
    ice_sublayers: int = _f(3, "", "Independent ice sub-slabs across the thickness.", ge=1)
    # detector
    gain_pixel_sigma: float = _f(0.03, "", "Pixel-to-pixel relative scatter of the gain.", ge=0)
    n_hot_pixels: int = _f(12, "", "Hot pixels on the camera.", ge=0)
    hot_pixel_rate: float = _f(20.0, "counts/frame", "Extra mean counts of a hot pixel per frame.", ge=0)
    xray_hits_per_tilt: float = _f(2.0, "", "Mean number of X-ray hits per tilt movie.", ge=0)
    # truth
    truth_binning: int = _f(4, "", "Binning of the written true specimen volume.", ge=1)

    def names(self) -> list[str]:
        """Tilt-series names TS_01, TS_02, ..."""
        return [f"TS_{i + 1:02d}" for i in range(self.n_series)]


PRESETS: dict[str, SimParams] = {
    "tiny": SimParams(
        n_series=1, image_nx_px=512, image_ny_px=512, pixel_size_A=2.0, n_frames=4, max_tilt_deg=30.0,
        tilt_step_deg=10.0, n_particles=16, slab_thickness_A=600.0, n_globular_distractors=1, n_contamination=0,
        shift_sigma_A=20.0, shift_walk_A=6.0, n_hot_pixels=4, xray_hits_per_tilt=2.0, truth_binning=2,
        field_fraction=0.8,
    ),
    "small": SimParams(),
}


@dataclass
class SynthSummary:
    """What :func:`generate` wrote: folders, series names, files, sizes, timings."""

    out_dir: Path
    data_dir: Path
    truth_dir: Path
    series: list[str]
    mdoc_paths: list[Path]
    n_particles: int
    bytes_data: int
    bytes_truth: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


def _ref_box(pixel_size_A: float) -> int:
    n = int(math.ceil((2 * APOFERRITIN_RADIUS_A + 16.0) / pixel_size_A))
    return n + (n % 2)


def _angle_label(a: float) -> str:
    return f"{a:.1f}"


def _dir_bytes(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def _protein_volume_A3(atoms: specimen.Atoms) -> float:
    """Volume of a protein from its atoms' masses at 1.35 g/cm³ (1.23 Å³ per Da)."""
    masses = {"H": 1.008, "C": 12.011, "N": 14.007, "O": 15.999, "S": 32.06, "P": 30.974, "Fe": 55.845,
              "Zn": 65.38}
    counts = np.bincount(np.asarray(atoms.element, dtype=np.int64), minlength=len(atoms.names))
    mass = sum(masses.get(el, 12.0) * int(c) for el, c in zip(atoms.names, counts, strict=True))
    return mass * 1.66054 / 1.35


def _distractor_sets(d: specimen.Distractors, pixel_size_A: float, v_ice: float) -> list[simulate.ParticleSet]:
    """One projector per distractor (its atoms rendered into a box, identity rotation)."""
    sets = []
    if len(d.centres_A) == 0:
        return sets
    xyz = d.atoms.xyz_A
    for c, r, kind in zip(d.centres_A, d.radii_A, d.kinds, strict=True):
        sel = np.linalg.norm(xyz - c, axis=1) <= r * 1.05 + 1.0
        box = int(math.ceil((2 * r + 16.0) / pixel_size_A))
        box += box % 2
        vol = specimen.render_volume(
            (xyz[sel] - c) / pixel_size_A + box // 2, d.atoms.element[sel], d.atoms.b_A2[sel], (box,) * 3,
            pixel_size_A, names=d.atoms.names)
        dens = 0.10 if kind == "contamination" else 0.05  # atoms/Å³ of specimen.distractors
        vol = simulate.solvent_excluded(vol, pixel_size_A, int(sel.sum()) / dens, v_ice)
        sets.append(simulate.ParticleSet(simulate.FourierProjector(vol, pixel_size_A, pad=2),
                                         np.asarray(c, float)[None, :] / pixel_size_A, np.eye(3)[None]))
    return sets


def generate(
    out_dir: str | Path,
    params: SimParams | None = None,
    *,
    progress: Callable[[float, str], Any] | None = None,
) -> SynthSummary:
    """Simulate the acquisition described by ``params`` (default: the ``small`` preset) into ``out_dir``.

    ``progress(fraction, message)`` is called about once per tilt. Returns a :class:`SynthSummary`.
    Existing files of the same names are overwritten.
    """
    t_start = time.perf_counter()
    p = params or PRESETS["small"]
    out = Path(out_dir)
    data_dir, truth_dir = out / "data", out / "truth"
    data_dir.mkdir(parents=True, exist_ok=True)
    truth_dir.mkdir(parents=True, exist_ok=True)
    px = p.pixel_size_A
    shape = (p.image_ny_px, p.image_nx_px)

    def report(frac: float, msg: str) -> None:
        if progress is not None:
            progress(float(min(max(frac, 0.0), 1.0)), msg)

    seeds = np.random.SeedSequence(p.seed).spawn(2 + p.n_series)
    cam_rng = np.random.default_rng(seeds[0])

    report(0.0, "apoferritin map")
    box = _ref_box(px)
    ref_map = specimen.apoferritin_map(px, box)
    mrc.write_mrc(truth_dir / "apoferritin.mrc", ref_map, px)
    v_ice = simulate.ice_mean_potential_V() if p.solvent_contrast else 0.0
    atoms = specimen.apoferritin_atoms()
    ref_in_ice = simulate.solvent_excluded(ref_map, px, _protein_volume_A3(atoms), v_ice)
    projector = simulate.FourierProjector(ref_in_ice, px)

    gain = simulate.make_gain_reference(shape, cam_rng, pixel_sigma=p.gain_pixel_sigma)
    mrc.write_mrc(data_dir / "gain.mrc", np.ascontiguousarray(gain[:, ::-1]), px)
    hot = simulate.choose_hot_pixels(shape, p.n_hot_pixels, cam_rng)
    pd.DataFrame({"y": hot[:, 0], "x": hot[:, 1]}).to_csv(truth_dir / "hot_pixels.csv", index=False)

    particle_rows: list[pd.DataFrame] = []
    distractor_rows: list[dict[str, Any]] = []
    mdoc_paths: list[Path] = []
    series_info: dict[str, Any] = {}
    names = p.names()
    n_views_total = len(simulate.dose_symmetric_angles(p.max_tilt_deg, p.tilt_step_deg)) * len(names)
    done = 0
    # the slab of specimen.place_particles: rotated about x, then about y (R = Ry @ Rx)
    slab_rot = Rotation.from_euler("xy", (p.slab_tilt_x_deg, p.slab_tilt_y_deg), degrees=True).as_matrix()
    slab_normal = slab_rot @ np.array([0.0, 0.0, 1.0])
    field_xy = (p.image_nx_px * px * p.field_fraction, p.image_ny_px * px * p.field_fraction)
    t0 = datetime(2026, 1, 15, 9, 30, 0)

    for si, name in enumerate(names):
        rng = np.random.default_rng(seeds[2 + si])
        pos_A, rots = specimen.place_particles(
            p.n_particles, field_xy_A=field_xy, slab_thickness_A=p.slab_thickness_A,
            slab_tilt_deg=(p.slab_tilt_x_deg, p.slab_tilt_y_deg), radius_A=APOFERRITIN_RADIUS_A, min_gap_A=4.0,
            rng=rng)
        dis = specimen.distractors(
            p.n_globular_distractors, p.n_contamination, field_xy_A=field_xy, slab_thickness_A=p.slab_thickness_A,
            slab_tilt_deg=(p.slab_tilt_x_deg, p.slab_tilt_y_deg), occupied_A=pos_A,
            occupied_radius_A=APOFERRITIN_RADIUS_A, rng=rng)
        sets = [simulate.ParticleSet(projector, pos_A / px, rots)] + _distractor_sets(dis, px, v_ice)
        truth = simulate.plan_series(
            name=name, shape=shape, pixel_size_A=px, rng=rng, max_tilt_deg=p.max_tilt_deg,
            step_deg=p.tilt_step_deg, first_group=p.first_group, group_size=p.group_size,
            tilt_axis_deg=p.tilt_axis_deg, tilt_offset_deg=p.tilt_offset_deg, axis_error_deg=p.axis_error_deg,
            shift_sigma_A=p.shift_sigma_A, shift_walk_A=p.shift_walk_A, dose_per_tilt_e_A2=p.dose_per_tilt_e_A2,
            n_frames=p.n_frames, nominal_defocus_A=p.nominal_defocus_um * 1e4, defocus_sigma_A=p.defocus_sigma_A,
            astigmatism_A=p.astigmatism_A, drift_A=p.drift_A, defocus_handedness=p.defocus_handedness,
            voltage_kV=p.voltage_kV, cs_mm=p.cs_mm, amplitude_contrast=p.amplitude_contrast,
        )
        geom = truth.geometry
        ts_dir = data_dir / name
        ts_dir.mkdir(parents=True, exist_ok=True)
        tr_dir = truth_dir / name
        tr_dir.mkdir(parents=True, exist_ok=True)
        ext = "mrc" if p.movie_format == "mrc" else "tif"
        nominal = np.asarray(geom.tilt_angles_deg)
        order = np.asarray(geom.acquisition_order)
        movie_names = [f"{name}_{order[v]:03d}_{_angle_label(nominal[v])}.{ext}" for v in range(geom.n_views)]
        xray_rows: list[dict[str, Any]] = []
        sections: list[dict[str, Any]] = []
        series_start = t0 + timedelta(hours=si)
        for acq in range(geom.n_views):
            v = int(np.flatnonzero(order == acq)[0])
            frames, events, diag = simulate.simulate_view(
                truth, v, sets, gain=gain, hot_pixels=hot, rng=rng, ice_thickness_A=p.slab_thickness_A,
                slab_normal=tuple(slab_normal), carbon_thickness_A=p.carbon_thickness_A,
                ice_sublayers=p.ice_sublayers, layer_thickness_A=p.layer_thickness_A, bfactor_A2=p.bfactor_A2,
                ice_excess=p.ice_excess,
                hot_pixel_rate=p.hot_pixel_rate, xray_hits_per_view=p.xray_hits_per_tilt,
            )
            path = ts_dir / movie_names[v]
            if p.movie_format == "mrc":
                movies.write_movie_mrc(path, frames.astype(np.int8), px)  # counts 0..127: mode 0, exact
            else:
                movies.write_movie_tiff(path, frames)
            for fr, y, x, c in events.xray_pixels:
                xray_rows.append({"movie": movie_names[v], "tilt_index": v, "acquisition_order": acq,
                                  "frame": int(fr), "y": int(y), "x": int(x), "counts_added": int(c)})
            when = series_start + timedelta(seconds=int(acq * 62 + (acq * 37) % 11))
            sections.append({
                "ZValue": acq,
                "TiltAngle": round(float(nominal[v]), 3),
                "StagePosition": "12.345 -67.89",
                "StageZ": -12.5,
                "Magnification": 64000,
                "Intensity": 0.0912,
                "ExposureDose": p.dose_per_tilt_e_A2,
                "DoseRate": 8.0,
                "PixelSpacing": px,
                "SpotSize": 8,
                "Defocus": round(-float(truth.defocus_u_A[v] + truth.defocus_v_A[v]) / 2e4, 4),
                "ImageShift": "0.0 0.0",
                "RotationAngle": round(((p.tilt_axis_deg + 90.0 + 180.0) % 360.0) - 180.0, 2),
                "ExposureTime": 1.2,
                "Binning": 1,
                "CameraIndex": 0,
                "DividedBy2": 0,
                "MagIndex": 31,
                "TargetDefocus": -p.nominal_defocus_um,
                "SubFramePath": f"X:\\tomoguide\\{name}\\frames\\{movie_names[v]}",
                "NumSubFrames": p.n_frames,
                "FrameDosesAndNumber": f"{p.dose_per_tilt_e_A2 / p.n_frames:g} {p.n_frames}",
                "DateTime": mdoc.format_serialem_datetime(when),
            })
            done += 1
            report(0.05 + 0.85 * done / n_views_total,
                   f"{name}: tilt {acq + 1}/{geom.n_views} ({nominal[v]:+.1f}°)")
        mdoc_path = ts_dir / f"{name}.mdoc"
        mdoc.write_mdoc(
            mdoc_path,
            title_lines=[
                f"SerialEM: Digitized on tomoguide simulator (seed {p.seed})       "
                f"{mdoc.format_serialem_datetime(series_start)}    ",
                f"    Tilt axis angle = {p.tilt_axis_deg:.1f}, binning = 1  spot = 8  camera = 0",
            ],
            global_fields={"PixelSpacing": px, "Voltage": p.voltage_kV, "ImageFile": f"{name}.mrc",
                           "ImageSize": f"{p.image_nx_px} {p.image_ny_px}", "DataMode": 1},
            sections=sections,
        )
        mdoc_paths.append(mdoc_path)

        # ---- truth files -----------------------------------------------------------------------------
        rel = geom.to_relion5()
        pms = geom.projection_matrices()
        centre_depth_A = np.array([
            float(simulate.mid_plane_depth_px(pms[v], slab_normal, geom.image_centre_px()[None])[0]) * px
            for v in range(geom.n_views)])
        df_centre = p.defocus_handedness * centre_depth_A
        df = pd.DataFrame({
            "rlnMicrographMovieName": [f"data/{name}/{m}" for m in movie_names],
            "rlnTomoNominalStageTiltAngle": nominal,
            "rlnTomoXTilt": rel["rlnTomoXTilt"],
            "rlnTomoYTilt": rel["rlnTomoYTilt"],
            "rlnTomoZRot": rel["rlnTomoZRot"],
            "rlnTomoXShiftAngst": rel["rlnTomoXShiftAngst"],
            "rlnTomoYShiftAngst": rel["rlnTomoYShiftAngst"],
            "rlnMicrographPreExposure": np.asarray(geom.prior_dose_e_A2),
            "rlnDefocusU": truth.defocus_u_A,
            "rlnDefocusV": truth.defocus_v_A,
            "rlnDefocusAngle": truth.astig_angle_deg,
            "tomoguideDefocusUAtImageCentre": truth.defocus_u_A + df_centre,
            "tomoguideDefocusVAtImageCentre": truth.defocus_v_A + df_centre,
            "tomoguideAcquisitionOrder": order,
            "tomoguideDose": np.asarray(geom.dose_e_A2),
            "tomoguideSpecimenShiftX": geom.specimen_shifts_px()[:, 0],
            "tomoguideSpecimenShiftY": geom.specimen_shifts_px()[:, 1],
        })
        fs = truth.frame_shifts_px
        shifts = pd.DataFrame({
            "rlnMicrographMovieName": np.repeat([f"data/{name}/{m}" for m in movie_names], truth.n_frames),
            "rlnMicrographFrameNumber": np.tile(np.arange(1, truth.n_frames + 1), geom.n_views),
            "rlnMicrographShiftX": fs[:, :, 0].ravel(),
            "rlnMicrographShiftY": fs[:, :, 1].ravel(),
        })
        star.write_star(tr_dir / f"{name}_tilts.star", {"tilts": df, "frame_shifts": shifts})
        xf_rows, tlt = geom.to_imod()
        imod.write_xf(tr_dir / f"{name}.xf", xf_rows)
        imod.write_tlt(tr_dir / f"{name}.tlt", tlt, fmt="%9.4f")
        (tr_dir / f"{name}_geometry.json").write_text(geom.model_dump_json(indent=1))
        pd.DataFrame(xray_rows, columns=["movie", "tilt_index", "acquisition_order", "frame", "y", "x",
                                         "counts_added"]).to_csv(tr_dir / f"{name}_xray_hits.csv", index=False)
        eul = matrix_to_euler(rots) if len(rots) else np.zeros((0, 3))
        particle_rows.append(pd.DataFrame({
            "rlnTomoName": [name] * len(pos_A),
            "rlnCenteredCoordinateXAngst": pos_A[:, 0], "rlnCenteredCoordinateYAngst": pos_A[:, 1],
            "rlnCenteredCoordinateZAngst": pos_A[:, 2],
            "rlnAngleRot": eul[:, 0], "rlnAngleTilt": eul[:, 1], "rlnAnglePsi": eul[:, 2],
        }))
        for c, r, kind in zip(dis.centres_A, dis.radii_A, dis.kinds, strict=True):
            distractor_rows.append({"tomo": name, "x_A": c[0], "y_A": c[1], "z_A": c[2], "radius_A": r,
                                    "kind": kind})

        # ---- true specimen volume (binned) -----------------------------------------------------------
        report(0.05 + 0.85 * done / n_views_total, f"{name}: true specimen volume")
        b = p.truth_binning
        vnx, vny = p.image_nx_px // b, p.image_ny_px // b
        extent_z = p.slab_thickness_A + max(field_xy) * abs(math.sin(math.radians(
            max(abs(p.slab_tilt_x_deg), abs(p.slab_tilt_y_deg))))) + 40.0
        vnz = int(math.ceil(extent_z / (px * b)))
        vnz += vnz % 2
        ref_sets = [(ref_in_ice, pos_A / px, rots)]
        for s in sets[1:]:
            ref_sets.append((_unpad_map(s.projector), s.positions_px, s.rotations))
        vol = simulate.specimen_volume(ref_sets, (vnz, vny, vnx), px, b)
        mrc.write_mrc(tr_dir / f"{name}_specimen_bin{b}.mrc", vol, px * b)
        series_info[name] = {
            "n_views": geom.n_views, "n_particles": int(len(pos_A)), "n_distractors": int(len(dis.centres_A)),
            "movies": [f"data/{name}/{m}" for m in movie_names], "mdoc": f"data/{name}/{name}.mdoc",
            "specimen_volume": f"truth/{name}/{name}_specimen_bin{b}.mrc",
            "specimen_volume_shape_zyx": [vnz, vny, vnx],
            "n_xray_hit_pixels": len(xray_rows),
        }

    parts = pd.concat(particle_rows, ignore_index=True)
    star.write_particles_star(
        truth_dir / "particles.star", parts,
        {"rlnTomoTiltSeriesPixelSize": px, "rlnVoltage": p.voltage_kV, "rlnSphericalAberration": p.cs_mm,
         "rlnAmplitudeContrast": p.amplitude_contrast, "rlnImagePixelSize": px},
    )
    pd.DataFrame(distractor_rows, columns=["tomo", "x_A", "y_A", "z_A", "radius_A", "kind"]).to_csv(
        truth_dir / "distractors.csv", index=False)

    summary = {
        "generator": "tomoguide.synth", "params": p.model_dump(), "series": series_info,
        "reference_map": {"path": "truth/apoferritin.mrc", "box_px": box, "pixel_size_A": px,
                          "centre_voxel": "box // 2 on every axis (RELION)", "units": "V (vacuum potential)",
                          "orientation": "4-fold axes along x, y, z; symmetry O"},
        "conventions": _CONVENTIONS | {"true_volume_binning": p.truth_binning},
    }
    (truth_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=_json_default))
    report(1.0, "done")
    return SynthSummary(
        out_dir=out, data_dir=data_dir, truth_dir=truth_dir, series=names, mdoc_paths=mdoc_paths,
        n_particles=int(len(parts)), bytes_data=_dir_bytes(data_dir), bytes_truth=_dir_bytes(truth_dir),
        seconds=time.perf_counter() - t_start,
    )


def _unpad_map(proj: simulate.FourierProjector) -> np.ndarray:
    """The (gridding-uncorrected) map a projector was built from, recovered for the volume writer."""
    return proj.source_map


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


_CONVENTIONS: dict[str, str] = {
    "geometry": "tomoguide.geometry.TiltSeriesGeometry (see <TS>_geometry.json): raw image centre "
                "((nx-1)/2, (ny-1)/2); tilt axis angle from image +Y, counter-clockwise; xf (IMOD) maps raw "
                "to aligned; aligned_xy = [Ry(true tilt) p]_xy, +tilt moves +z towards +x; "
                "true tilt = nominal + tilt_offset_deg.",
    "tomogram_frame": "x, y, z in Å from the tomogram centre, tilt axis along y, z along the beam at 0°; "
                      "particles.star rlnCenteredCoordinateX/Y/ZAngst are in this frame (no z flip).",
    "particle_orientation": "x_tomogram = R @ x_reference + t; rlnAngleRot/Tilt/Psi = RELION ZYZ Euler "
                            "angles of R (tomoguide.compute.euler.matrix_to_euler), reference = "
                            "truth/apoferritin.mrc.",
    "defocus": "Å, positive = underfocus; rlnDefocusU >= rlnDefocusV; rlnDefocusAngle = angle of U from "
               "image X, counter-clockwise, in the RAW image; value at the tomogram centre (depth 0); "
               "tomoguideDefocusU/VAtImageCentre: at the slab mid-plane seen at the raw image centre. "
               "A point at depth d (third row of projection_matrices, Å) has defocus + "
               "defocus_handedness * d.",
    "frame_shifts": "rlnMicrographShiftX/Y (px): the shift that ALIGNS frame j onto frame 1 (translate frame "
                    "j by it); frame 1 = 0. The truth xf / specimen shifts describe the frame-1-aligned sum.",
    "dose": "rlnMicrographPreExposure = cumulative e/Å² before the tilt (acquisition order x dose per tilt); "
            "frames split the tilt's dose equally; exposure filter of Grant & Grigorieff 2015 applied to "
            "the specimen signal per frame interval (ice not filtered).",
    "gain": "data/gain.mrc is stored FLIPPED IN X: gain = gain_file[:, ::-1]; raw counts = "
            "Poisson(dose_per_frame * pixel^2 * I / gain); corrected = raw * gain.",
    "movies": "MRC: int8 counts 0..127 (mode 0, identical under signed and unsigned readings), X-ray hits "
              "saturate at 127; TIFF: uint8, zlib. Movie name <TS>_<acquisition order>_<nominal tilt>.",
    "hot_pixels": "truth/hot_pixels.csv (y, x) in movie orientation: extra Poisson counts every frame.",
    "xray_hits": "truth/<TS>/<TS>_xray_hits.csv: pixels (y, x) of each hit, frame 0-based, counts added "
                 "(before saturation); tilt_index in angle order.",
    "volume": "true specimen volume: potential in V relative to the surrounding ice (particles minus the ice "
              "they displace when solvent_contrast),  binned by true_volume_binning (voxel = pixel * bin), "
              "tomogram-frame centre at voxel ((n-1)/2) of each axis, array order (z, y, x).",
    "mdoc": "SerialEM style; sections in acquisition order (ZValue = order); TiltAngle nominal; "
            "RotationAngle = tilt axis + 90; TargetDefocus negative µm (SerialEM sign); Defocus = true "
            "mean defocus in µm, negative = underfocus (microscope reading style).",
}
