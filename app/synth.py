"""Synthetic apoferritin tilt-series acquisition with ground truth: the demo data and the test oracle.

:func:`generate` writes, like a SerialEM session plus a separate truth folder (``layout="flat"``, the
default; ``<G>`` = ``gain_file_name``, default ``gain.mrc``)::

    out_dir/data/<G>                          gain reference (float32, .mrc or .tif), stored in one of the 8
                                              orientations: gain = flips(transpose(file)) (see below);
                                              default flipped in X as the tutorial's: gain = file[:, ::-1]
    out_dir/data/<TS>/<TS>_<NNN>_<angle>.mrc  movies, one per tilt (int8 counts 0..127, MRC mode 0,
                                              an image stack of n_frames); .tif (uint8, LZW as SerialEM
                                              writes) with movie_format="tiff"; .eer (Falcon EER, 65001,
                                              eer_fractions_per_frame fractions per frame) with "eer";
                                              TIFF and EER rows stored top first as SerialEM does, so all
                                              three formats read into the same frames (io.movies)
                                              NNN = acquisition order (000 first), angle "%.1f"
    out_dir/data/<TS>/<TS>.mdoc               SerialEM mdoc, [ZValue] sections in acquisition order
    out_dir/data/<TS>/<movie>.mdoc            per-movie [FrameSet = 0] mdocs (mdoc_kind "per_movie"/"both")

With ``layout="frames"`` (SerialEM's other habit): ``data/<TS>.mdoc``, movies (and their per-movie mdocs) in
``data/Frames/<TS>/`` named ``<TS>_<NNN>_<angle %.2f>.<ext>``, the gain in ``data/Frames/``, and
``SubFramePath = X:\\Frames\\<TS>\\<movie>``. The truth::

    out_dir/truth/summary.json                every convention and number (read it first); "planted": the
                                              conventions and problems of this session (scheme, layout, gain
                                              orientation, mdoc axis vs true axis, dark and jump views)
    out_dir/truth/apoferritin.mrc             the reference map (V) at the data pixel size, centre n // 2
    out_dir/truth/particles.star              RELION 5 particles of all series (Å, tomogram frame)
    out_dir/truth/distractors.csv             non-apoferritin objects (centre Å, radius, kind)
    out_dir/truth/hot_pixels.csv              hot pixels (y, x) in the raw (movie) orientation
    out_dir/truth/<TS>/<TS>_tilts.star        per-tilt truth (angle order) + frame shifts
    out_dir/truth/<TS>/<TS>.xf, <TS>.tlt      true IMOD alignment (raw → aligned, unbinned px; true tilts)
    out_dir/truth/<TS>/<TS>_geometry.json     the true tomoguide.geometry.TiltSeriesGeometry
    out_dir/truth/<TS>/<TS>_xray_hits.csv     X-ray hit pixels (movie, frame, y, x, counts)
    out_dir/truth/<TS>/<TS>_specimen_bin<B>.mrc   true specimen potential (V) binned B×

Session conventions and planted problems are :class:`SimParams` options (tilt scheme, mdoc axis error, gain
orientation and name, layout, per-movie mdocs, movie format, CRLF, series names, dark and jump views);
:data:`SCENARIOS` combines them into eight sessions built from the small preset's physics.

All physics lives in :mod:`tomoguide.compute.simulate` (see its docstring for the image model). Everything
is deterministic for ``SimParams.seed``.

Defocus handedness: the default ``defocus_handedness = -1`` is that of real SerialEM data in IMOD's frame
(:mod:`tomoguide.geometry`), so the truth and the data follow real instruments; +1 simulates the other hand.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy.spatial.transform import Rotation

from tomoguide.compute import backend, simulate, specimen
from tomoguide.compute.euler import matrix_to_euler
from tomoguide.compute.io import eer, imod, mdoc, movies, mrc, star

__all__ = ["SimParams", "PRESETS", "SCENARIOS", "SCENARIO_NOTES", "SynthSummary", "generate", "stored_gain",
           "restore_gain"]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
GAIN_SUFFIXES = (".mrc", ".tif", ".tiff")

APOFERRITIN_RADIUS_A = 68.0  # atoms lie between 37 and 68 Å from the centre (7A4M 24-mer)


def _f(default: Any, unit: str, help_text: str, **kw: Any) -> Any:
    return Field(default, description=help_text, json_schema_extra={"unit": unit}, **kw)


class SimParams(BaseModel):
    """Every number of the simulated acquisition. Units in each field's ``unit`` (json_schema_extra)."""

    model_config = ConfigDict(extra="forbid")

    seed: int = _f(2026, "", "Random seed: the same seed gives the same data, bit for bit.")
    n_series: int = _f(2, "", "Number of tilt series (named TS_01, TS_02, ... unless series_names).", ge=1, le=99)
    image_nx_px: int = _f(1024, "px", "Image width (columns) of the camera.", ge=64)
    image_ny_px: int = _f(1024, "px", "Image height (rows) of the camera.", ge=64)
    pixel_size_A: float = _f(2.0, "Å", "Pixel size of the movies.", gt=0.3, le=20.0)
    n_frames: int = _f(6, "", "Frames per tilt movie.", ge=1, le=100)
    movie_format: Literal["mrc", "tiff", "eer"] = _f(
        "mrc", "", "Movie file format: MRC stacks (int8), multi-page TIFF (uint8, LZW as SerialEM writes) or "
        "Falcon EER (eer_fractions_per_frame EER fractions per simulated frame).")
    eer_fractions_per_frame: int = _f(16, "", "EER fractions (camera frames, at most one event per pixel each) "
                                      "per simulated frame (movie_format eer).", ge=2, le=64)
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
    defocus_handedness: Literal[1, -1] = _f(
        -1, "", "Sign of the defocus change with depth (geometry.py): -1 as real SerialEM data read in IMOD's "
        "frame (IMOD ctfphaseflip, RELION 5's rlnTomoHand default); +1 for AreTomo3's convention.")
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
    # session conventions (how SerialEM / vendor sessions differ)
    tilt_scheme: Literal["dose_symmetric", "bidirectional", "unidirectional"] = _f(
        "dose_symmetric", "", "Order of the tilts: dose-symmetric (grouped when group_size > 1), bidirectional "
        "(start_tilt_deg up to +max, then start - step down to -max) or unidirectional (-max to +max).")
    start_tilt_deg: float = _f(0.0, "°", "First tilt of the series (bidirectional; dose-symmetric around it). "
                               "Tilts lie on the grid start + k x step.")
    mdoc_axis_error_deg: float = _f(0.0, "°", "The mdoc's 'Tilt axis angle' (and RotationAngle) is the true axis "
                                    "plus this (180: tilt direction inverted). The truth keeps the true axis.")
    gain_transpose: bool = _f(False, "", "Gain file orientation: transpose it first to restore the camera's "
                              "orientation (then flip X, then flip Y, as read_gain applies them).")
    gain_flip_x: bool = _f(True, "", "Gain file orientation: flip X (mirror columns) after the transpose.")
    gain_flip_y: bool = _f(False, "", "Gain file orientation: flip Y (mirror rows) after the flip X.")
    gain_file_name: str = _f("gain.mrc", "", "File name of the gain reference (.mrc, or .tif/.tiff float32).")
    layout: Literal["flat", "frames"] = _f(
        "flat", "", "flat: data/<TS>/<TS>.mdoc with the movies beside it, gain in data/; frames: data/<TS>.mdoc, "
        "movies in data/Frames/<TS>/ (SubFramePath X:\\Frames\\<TS>\\<movie>), gain in data/Frames/.")
    mdoc_kind: Literal["series", "per_movie", "both"] = _f(
        "series", "", "series: one mdoc per tilt series; per_movie: one [FrameSet = 0] <movie>.mdoc beside each "
        "movie (no title axis, RotationAngle = axis + 90); both.")
    line_endings: Literal["lf", "crlf"] = _f("lf", "", "Line endings of the mdoc files (crlf: Windows).")
    series_names: list[str] | None = _f(None, "", "Names of the tilt series (default TS_01, TS_02, ...).")
    # planted problems
    dark_view_tilts_deg: list[float] = _f([], "°", "Nominal tilts of views recorded (nearly) dark: their dose "
                                          "is dose x dark_view_dose_fraction.")
    dark_view_dose_fraction: float = _f(0.03, "", "Fraction of the dose a dark view receives.", gt=0, lt=1)
    jump_view_tilts_deg: list[float] = _f([], "°", "Nominal tilts of views with an extra specimen shift jump_A "
                                          "(a tracking jump), part of the true alignment.")
    jump_A: tuple[float, float] = _f((240.0, -144.0), "Å", "Extra specimen shift (x, y) of the jump views.")
    stated_pixel_size_A: float | None = _f(
        None, "Å", "Pixel size the mdoc's PixelSpacing and the movie and gain headers state (a wrong calibration, "
        "e.g. 2.2 for a true 2.0); None: the true pixel_size_A. The truth keeps the true one.", gt=0.3, le=20.0)

    @model_validator(mode="after")
    def _consistent(self) -> SimParams:
        if self.series_names is not None:
            if len(self.series_names) != self.n_series:
                raise ValueError(f"series_names has {len(self.series_names)} names for n_series = {self.n_series}")
            if len(set(self.series_names)) != len(self.series_names):
                raise ValueError(f"series_names must be distinct, got {self.series_names}")
            bad = [n for n in self.series_names if not _NAME_RE.match(n)]
            if bad:
                raise ValueError(f"series_names {bad}: letters, digits, '_', '-', '.' only, not starting with "
                                 "'.', '_' or '-'")
        name = self.gain_file_name
        if not _NAME_RE.match(name) or Path(name).suffix.lower() not in GAIN_SUFFIXES:
            raise ValueError(f"gain_file_name {name!r}: a plain file name ending in {', '.join(GAIN_SUFFIXES)}")
        try:
            nominal = simulate.tilt_scheme_angles(self.tilt_scheme, self.max_tilt_deg, self.tilt_step_deg,
                                                  start_deg=self.start_tilt_deg, first_group=self.first_group,
                                                  group_size=self.group_size)
            simulate.match_tilts(nominal, self.dark_view_tilts_deg, what="dark_view_tilts_deg")
            simulate.match_tilts(nominal, self.jump_view_tilts_deg, what="jump_view_tilts_deg")
        except ValueError as exc:
            raise ValueError(f"{exc} ({self.tilt_scheme}, ±{self.max_tilt_deg:g}° in {self.tilt_step_deg:g}° "
                             f"steps from {self.start_tilt_deg:g}°)") from None
        if self.movie_format == "eer":
            per_fraction = self.dose_per_tilt_e_A2 * self.pixel_size_A**2 / (
                self.n_frames * self.eer_fractions_per_frame)
            if per_fraction > 0.5:
                raise ValueError(f"{per_fraction:.2f} electrons per pixel per EER fraction: too many for a counting "
                                 "camera (at most one event per pixel and fraction); raise eer_fractions_per_frame "
                                 "or n_frames")
        return self

    def names(self) -> list[str]:
        """Tilt-series names: ``series_names`` or TS_01, TS_02, ..."""
        if self.series_names is not None:
            return list(self.series_names)
        return [f"TS_{i + 1:02d}" for i in range(self.n_series)]

    def acquisition_tilts_deg(self) -> np.ndarray:
        """Nominal tilts (degrees) in acquisition order (:func:`tomoguide.compute.simulate.tilt_scheme_angles`)."""
        return simulate.tilt_scheme_angles(self.tilt_scheme, self.max_tilt_deg, self.tilt_step_deg,
                                           start_deg=self.start_tilt_deg, first_group=self.first_group,
                                           group_size=self.group_size)

    def mdoc_axis_deg(self) -> float:
        """The tilt-axis angle the mdoc states: true axis + ``mdoc_axis_error_deg``, wrapped into (-180, 180]."""
        return round(_wrap180(self.tilt_axis_deg + self.mdoc_axis_error_deg), 6)


PRESETS: dict[str, SimParams] = {
    "tiny": SimParams(
        n_series=1, image_nx_px=512, image_ny_px=512, pixel_size_A=2.0, n_frames=4, max_tilt_deg=30.0,
        tilt_step_deg=10.0, n_particles=16, slab_thickness_A=600.0, n_globular_distractors=1, n_contamination=0,
        shift_sigma_A=20.0, shift_walk_A=6.0, n_hot_pixels=4, xray_hits_per_tilt=2.0, truth_binning=2,
        field_fraction=0.8,
    ),
    "small": SimParams(),
    # the tutorial's scale for scaling measurements (issue 18): 8 series of 41 tilts, the small preset's particles
    # per series
    "full": SimParams(n_series=8),
}


def _scenario(**changes: Any) -> SimParams:
    """A scenario: the small preset's physics (1024², ±60° in 3° steps, 6 frames) with ``changes``."""
    return SimParams.model_validate({**PRESETS["small"].model_dump(), "n_series": 1, **changes})


# The eight sessions of bench/scenarios.py: other conventions SerialEM and vendor software produce, each with
# its planted problems (see SCENARIO_NOTES; the truth's summary.json "planted" block lists them).
SCENARIOS: dict[str, SimParams] = {
    "frames_windows": _scenario(
        seed=107, series_names=["TS_07"], layout="frames", movie_format="tiff", line_endings="crlf",
        gain_file_name="CountRef_TS_07.mrc", gain_transpose=False, gain_flip_x=False, gain_flip_y=True,
        tilt_axis_deg=-94.0, mdoc_axis_error_deg=0.4, tilt_scheme="bidirectional", start_tilt_deg=-20.0,
        dark_view_tilts_deg=[58.0], jump_view_tilts_deg=[22.0], n_particles=150),
    "per_movie_mdocs": _scenario(
        seed=202, n_series=2, mdoc_kind="per_movie", movie_format="mrc", gain_transpose=True, gain_flip_x=False,
        gain_flip_y=False, tilt_axis_deg=85.0, n_particles=110),
    "axis_off_eer": _scenario(
        seed=303, movie_format="eer", tilt_axis_deg=-87.0, mdoc_axis_error_deg=-8.0, first_group=2, group_size=3,
        gain_flip_x=True, gain_flip_y=True, n_particles=150),
    "inverted_axis": _scenario(
        seed=404, tilt_axis_deg=85.0, mdoc_axis_error_deg=180.0, gain_flip_x=False, pixel_size_A=1.7,
        nominal_defocus_um=3.0, n_particles=150),
    "thick_crowded": _scenario(
        seed=505, slab_thickness_A=1200.0, n_particles=220, pixel_size_A=1.8, nominal_defocus_um=5.0,
        tilt_axis_deg=95.5, dose_per_tilt_e_A2=3.5, gain_transpose=True, gain_flip_x=True),
    "sparse_lowdose": _scenario(
        seed=606, n_particles=90, dose_per_tilt_e_A2=2.0, pixel_size_A=2.4, nominal_defocus_um=2.5,
        tilt_scheme="unidirectional", tilt_axis_deg=-178.0),
    "near90_tiff": _scenario(
        seed=707, tilt_axis_deg=91.5, mdoc_axis_error_deg=-0.2, movie_format="tiff", gain_file_name="gain_ref.tif",
        gain_flip_x=True, pixel_size_A=2.0, series_names=["Position_3"], n_particles=150),
    "grouped_dark": _scenario(
        seed=808, first_group=4, group_size=4, dark_view_tilts_deg=[-51.0, 60.0], jump_view_tilts_deg=[-27.0],
        gain_transpose=True, gain_flip_x=False, gain_flip_y=True, pixel_size_A=2.2, nominal_defocus_um=3.5,
        tilt_axis_deg=84.2, mdoc_axis_error_deg=0.8, n_particles=150),
}

SCENARIO_NOTES: dict[str, str] = {
    "frames_windows": "TS_07 in Frames/ with Windows SubFramePath, LZW TIFF, CRLF, CountRef gain flipped in Y, "
                      "axis -94.0 (mdoc -93.6), bidirectional from -20, dark +58, jump +22",
    "per_movie_mdocs": "two series, per-movie [FrameSet] mdocs only, MRC, gain transposed, axis 85, "
                       "dose-symmetric, 110 particles each",
    "axis_off_eer": "Falcon EER (16 fractions/frame), axis -87 but mdoc -95 (8° off), dose-symmetric groups "
                    "2+3, gain rotated 180°",
    "inverted_axis": "mdoc axis -95 for a true 85 (tilt direction inverted), gain not flipped, 1.7 Å, 3.0 µm",
    "thick_crowded": "1200 Å ice, 220 particles, 1.8 Å, 5.0 µm, axis 95.5, 3.5 e/Å² per tilt, gain "
                     "transposed + flipped in X",
    "sparse_lowdose": "90 particles, 2.0 e/Å² per tilt, 2.4 Å, 2.5 µm, unidirectional -60..+60, axis -178",
    "near90_tiff": "series Position_3, LZW TIFF, axis 91.5 (mdoc 91.3), gain_ref.tif flipped in X, 2.0 Å",
    "grouped_dark": "dose-symmetric groups of 4, dark -51 and +60, jump -27, gain transposed + flipped in Y, "
                    "2.2 Å, 3.5 µm, axis 84.2 (mdoc 85.0)",
}


@dataclass
class SynthSummary:
    """What :func:`generate` wrote: folders, series names, files, sizes, timings.

    ``mdoc_paths``: the series mdocs (none with ``mdoc_kind="per_movie"``); ``movie_mdoc_paths``: the per-movie
    [FrameSet] mdocs of every series (acquisition order), ``gain_path``: the gain reference."""

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
    movie_mdoc_paths: list[Path] = field(default_factory=list)
    gain_path: Path | None = None


def _ref_box(pixel_size_A: float) -> int:
    n = int(math.ceil((2 * APOFERRITIN_RADIUS_A + 16.0) / pixel_size_A))
    return n + (n % 2)


def _wrap180(a: float) -> float:
    """An angle in degrees wrapped into (-180, 180]."""
    w = float(a) % 360.0
    return w - 360.0 if w > 180.0 else w


def _angle_label(a: float, decimals: int = 1) -> str:
    return f"{a:.{decimals}f}"


def _axis_text(a: float) -> str:
    """The axis as SerialEM's title writes it: one decimal (two when needed)."""
    return f"{a:.1f}" if abs(round(a, 1) - a) < 1e-9 else f"{a:.2f}"


def stored_gain(gain: np.ndarray, *, transpose: bool, flip_x: bool, flip_y: bool) -> np.ndarray:
    """The gain as stored in the file so that :func:`restore_gain` (transpose, then flip X, then flip Y)
    gives back ``gain`` (ny, nx): the inverse operations in reverse order. float32, contiguous."""
    s = np.asarray(gain, dtype=np.float32)
    if flip_y:
        s = s[::-1, :]
    if flip_x:
        s = s[:, ::-1]
    if transpose:
        s = s.T
    return np.ascontiguousarray(s)


def restore_gain(stored: np.ndarray, *, transpose: bool, flip_x: bool, flip_y: bool) -> np.ndarray:
    """The camera-oriented gain from a stored one: transpose first, then flip X, then flip Y (the order of
    :func:`tomoguide.compute.io.movies.read_gain`, RELION and Warp)."""
    g = np.asarray(stored)
    if transpose:
        g = g.T
    if flip_x:
        g = g[:, ::-1]
    if flip_y:
        g = g[::-1, :]
    return np.ascontiguousarray(g)


def _gain_rule(p: SimParams, rel: str) -> str:
    ops = [name for name, on in (("transpose", p.gain_transpose), ("flip X", p.gain_flip_x),
                                 ("flip Y", p.gain_flip_y)) if on]
    how = ", then ".join(ops) if ops else "no operation"
    expr = "gain_file"
    if p.gain_transpose:
        expr = f"{expr}.T"
    if p.gain_flip_x:
        expr = f"({expr})[:, ::-1]"
    if p.gain_flip_y:
        expr = f"({expr})[::-1, :]"
    return (f"{rel} restores the camera orientation by {how}: gain = {expr}; raw counts = "
            "Poisson(dose_per_frame * pixel^2 * I / gain); corrected = raw * gain.")


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


def _write_frame_mdoc(path: Path, *, title: str, voltage_kV: float, section: dict[str, Any], eol: str) -> None:
    """A per-movie mdoc as SerialEM writes it beside each movie: a bare ``T = SerialEM: ...`` title line,
    ``Voltage``, then one ``[FrameSet = 0]`` section (atomic)."""
    lines = [f"T = {title}", f"Voltage = {mdoc.format_value(voltage_kV)}", "", "[FrameSet = 0]"]
    lines += [f"{k} = {mdoc.format_value(v)}" for k, v in section.items() if v is not None]
    lines.append("")
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", encoding="latin-1", newline="") as fh:
            fh.write(eol.join(lines) + eol)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_gain(path: Path, stored: np.ndarray, pixel_size_A: float) -> None:
    if path.suffix.lower() == ".mrc":
        mrc.write_mrc(path, stored, pixel_size_A)
    else:
        movies.write_gain_tiff(path, stored)


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
    frames_layout = p.layout == "frames"
    session_dir = data_dir / "Frames" if frames_layout else data_dir
    session_dir.mkdir(parents=True, exist_ok=True)
    eol = "\r\n" if p.line_endings == "crlf" else "\n"
    write_series_mdoc = p.mdoc_kind in ("series", "both")
    write_movie_mdocs = p.mdoc_kind in ("per_movie", "both")
    eer_k = p.eer_fractions_per_frame if p.movie_format == "eer" else 1
    n_sub = p.n_frames * eer_k  # frames in the movie file (EER: fractions)
    mdoc_axis = p.mdoc_axis_deg()
    rotation_angle = round(_wrap180(mdoc_axis + 90.0), 2)
    px_stated = p.stated_pixel_size_A or p.pixel_size_A  # what the files say (a planted wrong calibration)

    def report(frac: float, msg: str) -> None:
        if progress is not None:
            progress(float(min(max(frac, 0.0), 1.0)), msg)

    seeds = np.random.SeedSequence(p.seed).spawn(2 + p.n_series)
    cam_rng = np.random.default_rng(seeds[0])
    aux_seeds = seeds[1].spawn(p.n_series)  # EER fraction splits (unused otherwise: other data unchanged)

    report(0.0, "apoferritin map")
    box = _ref_box(px)
    ref_map = specimen.apoferritin_map(px, box)
    mrc.write_mrc(truth_dir / "apoferritin.mrc", ref_map, px)
    v_ice = simulate.ice_mean_potential_V() if p.solvent_contrast else 0.0
    atoms = specimen.apoferritin_atoms()
    ref_in_ice = simulate.solvent_excluded(ref_map, px, _protein_volume_A3(atoms), v_ice)
    projector = simulate.FourierProjector(ref_in_ice, px)

    gain = simulate.make_gain_reference(shape, cam_rng, pixel_sigma=p.gain_pixel_sigma)
    gain_path = session_dir / p.gain_file_name
    gain_rel = gain_path.relative_to(out).as_posix()
    _write_gain(gain_path, stored_gain(gain, transpose=p.gain_transpose, flip_x=p.gain_flip_x,
                                       flip_y=p.gain_flip_y), px_stated)
    hot = simulate.choose_hot_pixels(shape, p.n_hot_pixels, cam_rng)
    pd.DataFrame({"y": hot[:, 0], "x": hot[:, 1]}).to_csv(truth_dir / "hot_pixels.csv", index=False)

    particle_rows: list[pd.DataFrame] = []
    distractor_rows: list[dict[str, Any]] = []
    mdoc_paths: list[Path] = []
    movie_mdoc_paths: list[Path] = []
    series_info: dict[str, Any] = {}
    planted_dark: dict[str, list[dict[str, Any]]] = {}
    planted_jump: dict[str, list[dict[str, Any]]] = {}
    names = p.names()
    n_views_total = len(p.acquisition_tilts_deg()) * len(names)
    done = 0
    # the slab of specimen.place_particles: rotated about x, then about y (R = Ry @ Rx)
    slab_rot = Rotation.from_euler("xy", (p.slab_tilt_x_deg, p.slab_tilt_y_deg), degrees=True).as_matrix()
    slab_normal = slab_rot @ np.array([0.0, 0.0, 1.0])
    field_xy = (p.image_nx_px * px * p.field_fraction, p.image_ny_px * px * p.field_fraction)
    t0 = datetime(2026, 1, 15, 9, 30, 0)

    for si, name in enumerate(names):
        rng = np.random.default_rng(seeds[2 + si])
        eer_rng = np.random.default_rng(aux_seeds[si])
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
            tilt_scheme=p.tilt_scheme, start_tilt_deg=p.start_tilt_deg,
            dark_view_tilts_deg=p.dark_view_tilts_deg, dark_view_dose_fraction=p.dark_view_dose_fraction,
            jump_view_tilts_deg=p.jump_view_tilts_deg, jump_A=p.jump_A,
        )
        geom = truth.geometry
        movie_dir = session_dir / name if frames_layout else data_dir / name
        movie_dir.mkdir(parents=True, exist_ok=True)
        movie_rel = movie_dir.relative_to(out).as_posix()
        mdoc_path = data_dir / f"{name}.mdoc" if frames_layout else movie_dir / f"{name}.mdoc"
        tr_dir = truth_dir / name
        tr_dir.mkdir(parents=True, exist_ok=True)
        ext = {"mrc": "mrc", "tiff": "tif", "eer": "eer"}[p.movie_format]
        nominal = np.asarray(geom.tilt_angles_deg)
        order = np.asarray(geom.acquisition_order)
        doses = np.asarray(geom.dose_e_A2)
        decimals = 2 if frames_layout else 1
        movie_names = [f"{name}_{order[v]:03d}_{_angle_label(nominal[v], decimals)}.{ext}"
                       for v in range(geom.n_views)]
        xray_rows: list[dict[str, Any]] = []
        sections: list[dict[str, Any]] = []
        series_movie_mdocs: list[str] = []
        series_start = t0 + timedelta(hours=si)
        # each view draws from its own stream (children of the series' seed, in acquisition order), so views are
        # simulated in parallel threads and the movies do not depend on the number of threads
        view_seqs = seeds[2 + si].spawn(geom.n_views)

        def one_view(acq: int, truth: simulate.SeriesTruth = truth,
                     sets: list[simulate.ParticleSet] = sets,
                     view_seqs: list[np.random.SeedSequence] = view_seqs) -> tuple[Any, ...]:
            v = int(np.flatnonzero(order == acq)[0])
            return (v, *simulate.simulate_view(
                truth, v, sets, gain=gain, hot_pixels=hot, rng=np.random.default_rng(view_seqs[acq]),
                ice_thickness_A=p.slab_thickness_A,
                slab_normal=tuple(slab_normal), carbon_thickness_A=p.carbon_thickness_A,
                ice_sublayers=p.ice_sublayers, layer_thickness_A=p.layer_thickness_A, bfactor_A2=p.bfactor_A2,
                ice_excess=p.ice_excess,
                hot_pixel_rate=p.hot_pixel_rate, xray_hits_per_view=p.xray_hits_per_tilt,
                max_count=eer_k if p.movie_format == "eer" else 127,
            ))

        # closed when the loop ends early (an error, a cancelled progress callback): no view is started after
        with contextlib.closing(backend.imap_threads(one_view, range(geom.n_views))) as views:
            for acq, (v, frames, events, _diag) in enumerate(views):
                path = movie_dir / movie_names[v]
                when = series_start + timedelta(seconds=int(acq * 62 + (acq * 37) % 11))
                if p.movie_format == "mrc":
                    movies.write_movie_mrc(path, frames.astype(np.int8), px_stated)  # counts 0..127: mode 0, exact
                elif p.movie_format == "tiff":
                    movies.write_movie_tiff(path, frames, compression="lzw")  # rows top first, as SerialEM
                else:
                    # EER rasters are stored top row first: the MRC-frame frame flipped (movies.tiff_rows)
                    strips = [s for fr in frames for s in eer.encode_counts(movies.tiff_rows(fr), eer_k, eer_rng)]
                    eer.write_eer(path, strips, shape, metadata=_eer_metadata(p, name, acq, float(doses[v]), when))
                for fr, y, x, c in events.xray_pixels:
                    xray_rows.append({"movie": movie_names[v], "tilt_index": v, "acquisition_order": acq,
                                      "frame": int(fr), "y": int(y), "x": int(x), "counts_added": int(c)})
                if frames_layout:
                    sub_frame_path = f"X:\\Frames\\{name}\\{movie_names[v]}"
                else:
                    sub_frame_path = f"X:\\tomoguide\\{name}\\frames\\{movie_names[v]}"
                section = {
                    "ZValue": acq,
                    "TiltAngle": round(float(nominal[v]), 3),
                    "StagePosition": "12.345 -67.89",
                    "StageZ": -12.5,
                    "Magnification": 64000,
                    "Intensity": 0.0912,
                    "ExposureDose": float(doses[v]),
                    "DoseRate": 8.0,
                    "PixelSpacing": px_stated,
                    "SpotSize": 8,
                    "Defocus": round(-float(truth.defocus_u_A[v] + truth.defocus_v_A[v]) / 2e4, 4),
                    "ImageShift": "0.0 0.0",
                    "RotationAngle": rotation_angle,
                    "ExposureTime": 1.2,
                    "Binning": 1,
                    "CameraIndex": 0,
                    "DividedBy2": 0,
                    "MagIndex": 31,
                    "TargetDefocus": -p.nominal_defocus_um,
                    "SubFramePath": sub_frame_path,
                    "NumSubFrames": n_sub,
                    "FrameDosesAndNumber": f"{float(doses[v]) / n_sub:g} {n_sub}",
                    "DateTime": mdoc.format_serialem_datetime(when),
                }
                sections.append(section)
                if write_movie_mdocs:
                    frame_section = {"GainReference": p.gain_file_name,
                                     **{k: val for k, val in section.items() if k != "ZValue"}}
                    mpath = movie_dir / f"{movie_names[v]}.mdoc"
                    _write_frame_mdoc(
                        mpath, title=f"SerialEM: Digitized on tomoguide simulator (seed {p.seed})       "
                        f"{mdoc.format_serialem_datetime(when)}    ", voltage_kV=p.voltage_kV, section=frame_section,
                        eol=eol)
                    movie_mdoc_paths.append(mpath)
                    series_movie_mdocs.append(mpath.relative_to(out).as_posix())
                done += 1
                report(0.05 + 0.85 * done / n_views_total,
                       f"{name}: tilt {acq + 1}/{geom.n_views} ({nominal[v]:+.1f}°)")
        if write_series_mdoc:
            mdoc.write_mdoc(
                mdoc_path,
                title_lines=[
                    f"SerialEM: Digitized on tomoguide simulator (seed {p.seed})       "
                    f"{mdoc.format_serialem_datetime(series_start)}    ",
                    f"    Tilt axis angle = {_axis_text(mdoc_axis)}, binning = 1  spot = 8  camera = 0",
                ],
                global_fields={"PixelSpacing": px_stated, "Voltage": p.voltage_kV, "ImageFile": f"{name}.mrc",
                               "ImageSize": f"{p.image_nx_px} {p.image_ny_px}", "DataMode": 1},
                sections=sections,
                crlf=p.line_endings == "crlf",
            )
            mdoc_paths.append(mdoc_path)

        # ---- planted problems of this series ---------------------------------------------------------
        def view_entry(tilt: float) -> dict[str, Any]:
            v = int(simulate.match_tilts(nominal, [tilt])[0])
            return {"nominal_tilt_deg": float(nominal[v]), "view_index": v, "acquisition_order": int(order[v]),
                    "movie": f"{movie_rel}/{movie_names[v]}", "dose_e_A2": float(doses[v])}

        planted_dark[name] = [view_entry(t) for t in p.dark_view_tilts_deg]
        planted_jump[name] = [
            {**view_entry(t), "jump_A": [float(p.jump_A[0]), float(p.jump_A[1])],
             "jump_px": [float(p.jump_A[0]) / px, float(p.jump_A[1]) / px]} for t in p.jump_view_tilts_deg]

        # ---- truth files -----------------------------------------------------------------------------
        rel = geom.to_relion5()
        pms = geom.projection_matrices()
        centre_depth_A = np.array([
            float(simulate.mid_plane_depth_px(pms[v], slab_normal, geom.image_centre_px()[None])[0]) * px
            for v in range(geom.n_views)])
        df_centre = p.defocus_handedness * centre_depth_A
        df = pd.DataFrame({
            "rlnMicrographMovieName": [f"{movie_rel}/{m}" for m in movie_names],
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
            "rlnMicrographMovieName": np.repeat([f"{movie_rel}/{m}" for m in movie_names], truth.n_frames),
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
            "movies": [f"{movie_rel}/{m}" for m in movie_names],
            "mdoc": mdoc_path.relative_to(out).as_posix() if write_series_mdoc else None,
            "movie_mdocs": series_movie_mdocs, "movie_dir": movie_rel,
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

    planted = {
        "tilt_scheme": p.tilt_scheme, "start_tilt_deg": p.start_tilt_deg, "first_group": p.first_group,
        "group_size": p.group_size, "tilts_in_acquisition_order": p.acquisition_tilts_deg().tolist(),
        "layout": p.layout, "mdoc_kind": p.mdoc_kind, "movie_format": p.movie_format,
        "eer_fractions_per_frame": eer_k if p.movie_format == "eer" else None,
        "movie_frames_in_file": n_sub, "line_endings": p.line_endings, "series_names": names,
        "gain": {"path": gain_rel, "file_name": p.gain_file_name, "transpose": p.gain_transpose,
                 "flip_x": p.gain_flip_x, "flip_y": p.gain_flip_y,
                 "rule": "gain = flip_y(flip_x(transpose(file))), each when true (read_gain's order), file = the "
                         "stored gain as tomoguide.compute.io.movies.read_gain reads it (a .tif in the MRC frame, "
                         "rows flipped) and gain in the frame the movies are read in"},
        "tilt_axis": {"true_deg": p.tilt_axis_deg, "mdoc_deg": mdoc_axis, "mdoc_error_deg": p.mdoc_axis_error_deg,
                      "mdoc_rotation_angle_deg": rotation_angle,
                      "title_states_axis": write_series_mdoc},
        "dark_view_dose_fraction": p.dark_view_dose_fraction,
        "dark_views": planted_dark,
        "jump_views": planted_jump,
        "pixel_size": {"true_A": px, "stated_A": px_stated},
    }
    summary = {
        "generator": "tomoguide.synth", "params": p.model_dump(), "series": series_info, "planted": planted,
        "reference_map": {"path": "truth/apoferritin.mrc", "box_px": box, "pixel_size_A": px,
                          "centre_voxel": "box // 2 on every axis (RELION)", "units": "V (vacuum potential)",
                          "orientation": "4-fold axes along x, y, z; symmetry O"},
        "conventions": _CONVENTIONS | {"true_volume_binning": p.truth_binning, "gain": _gain_rule(p, gain_rel)},
    }
    (truth_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=_json_default))
    report(1.0, "done")
    return SynthSummary(
        out_dir=out, data_dir=data_dir, truth_dir=truth_dir, series=names, mdoc_paths=mdoc_paths,
        n_particles=int(len(parts)), bytes_data=_dir_bytes(data_dir), bytes_truth=_dir_bytes(truth_dir),
        seconds=time.perf_counter() - t_start, movie_mdoc_paths=movie_mdoc_paths, gain_path=gain_path,
    )


def _eer_metadata(p: SimParams, name: str, acq: int, dose_e_A2: float, when: datetime) -> dict[str, Any]:
    """Acquisition metadata of an EER movie (tag 65001), as a Falcon 4 writes it."""
    n = p.n_frames * p.eer_fractions_per_frame
    exposure_s = 1.2
    return {
        "acquisitionID": f"{name}_{acq:03d}",
        "cameraName": "BM-Falcon",
        "commercialName": "Falcon 4",
        "exposureTime": (exposure_s, "s"),
        "meanDoseRate": (dose_e_A2 * p.pixel_size_A**2 / exposure_s, "e/pixel/s"),
        "mode": "Counting",
        "numberOfFrames": n,
        "sensorPixelSize.height": ((p.stated_pixel_size_A or p.pixel_size_A) * 1e-10, "m"),
        "sensorPixelSize.width": ((p.stated_pixel_size_A or p.pixel_size_A) * 1e-10, "m"),
        "serialNumber": "tomoguide-sim",
        "timestamp": when,
        "totalDose": (dose_e_A2, "e/A^2"),
    }


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
    "dose": "rlnMicrographPreExposure = cumulative e/Å² before the tilt (sum of the doses of the tilts acquired "
            "before it); tomoguideDose = the tilt's dose (dose per tilt, x dark_view_dose_fraction for a dark "
            "view; the mdoc's ExposureDose says the same); frames split the tilt's dose equally; exposure filter "
            "of Grant & Grigorieff 2015 applied to the specimen signal per frame interval (ice not filtered).",
    "gain": "see planted.gain: the gain file restores the camera orientation by transpose, then flip X, then "
            "flip Y (each when set); corrected = raw * gain.",
    "movies": "MRC: int8 counts 0..127 (mode 0, identical under signed and unsigned readings), X-ray hits "
              "saturate at 127; TIFF: uint8, LZW (as SerialEM writes); EER: Falcon EER (BigTIFF, compression "
              "65001, one page per fraction, at most one event per pixel and fraction), each simulated frame "
              "split into eer_fractions_per_frame fractions (counts saturate at that number; truth frame j = "
              "fractions j*k .. j*k+k-1). Row order as SerialEM writes: MRC rows bottom first, TIFF and EER "
              "rows top first, so every format read as IMOD reads it (TIFF/EER flipped in Y; "
              "tomoguide.compute.io.movies) gives the same frames, and every truth file (geometry, mdoc axis, "
              "hot pixels, X-ray hits, gain orientation) refers to that MRC frame. A .tif gain is stored the "
              "same way. Movie name <TS>_<acquisition order %03d>_<nominal tilt>.<ext> "
              "(tilt %.1f, %.2f in the frames layout).",
    "hot_pixels": "truth/hot_pixels.csv (y, x) in movie orientation (the MRC frame, as the movies are read): "
                  "extra Poisson counts every frame.",
    "xray_hits": "truth/<TS>/<TS>_xray_hits.csv: pixels (y, x) of each hit, frame 0-based, counts added "
                 "(before saturation); tilt_index in angle order.",
    "volume": "true specimen volume: potential in V relative to the surrounding ice (particles minus the ice "
              "they displace when solvent_contrast),  binned by true_volume_binning (voxel = pixel * bin), "
              "tomogram-frame centre at voxel ((n-1)/2) of each axis, array order (z, y, x).",
    "mdoc": "SerialEM style; sections in acquisition order (ZValue = order); TiltAngle nominal; title "
            "'Tilt axis angle' = planted.tilt_axis.mdoc_deg (true axis + mdoc_axis_error_deg) and RotationAngle = "
            "that + 90 (wrapped into (-180, 180]); TargetDefocus negative µm (SerialEM sign); Defocus = true mean "
            "defocus in µm, negative = underfocus (microscope reading style); NumSubFrames = frames in the movie "
            "file (EER: fractions). Per-movie mdocs (<movie>.mdoc beside each movie): bare 'T = SerialEM: ...' "
            "title, Voltage, one [FrameSet = 0] section with the same keys plus GainReference (no axis title).",
}
