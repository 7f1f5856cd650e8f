"""Step 2, ``motion_ctf``: frame alignment with dose weighting, and the CTF of every tilt (as Warp does it).

For every tilt movie of every imported tilt series: gain correction (the gain's orientation detected from the
data by the import step, :func:`tomoguide.compute.gain.detect_orientation`, or the flip/transpose switches),
EER movies grouped into frames, alignment of the frames (:func:`tomoguide.compute.motion.align_movie`: cross-correlation against a running
reference, B-factor and resolution band, a smooth X×Y×temporal motion model), a dose-weighted sum; then the CTF
of the aligned (unweighted) sum (:func:`tomoguide.compute.ctffit.estimate_ctf`, tilt-aware, and the defocus
model grid with :func:`~tomoguide.compute.ctffit.fit_ctf_grid`).

Outputs: ``series`` (``series.json``: per series the dose-weighted stack in angle order, optional even/odd
stacks, the CTF STAR, the CTF preview stack and the frame shifts, with the geometry record at the output
binning and per-view ``ctf_failed`` and ``motion_failed`` flags for the exclusion step; ``motion_failed``: the
movie's frames could not be aligned (a dark, blank or featureless movie, or a trajectory beyond the physical
limits of :mod:`tomoguide.compute.motion`), its sum is the plain unshifted sum).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tomoguide.steps.base import Issue, Needs, Progress, RunContext, Step, StepParams, StepResult, StepRun, param
from tomoguide.steps.import_movies import load_series
from tomoguide.steps.import_tilt_series import imported_issues, is_imported, pass_through
from tomoguide.steps.records import (
    CTF_PREVIEW_PX,
    SeriesEntry,
    SeriesSet,
    ctf_preview,
    ctf_row,
    ctf_summary,
    write_ctf_results,
)



class MotionCtfParams(StepParams):
    binning: float = param(
        1.0, title="Binning", unit="×", hard=(1.0, 16.0), suggest=(1.0, 4.0),
        tutorial=1.0,
        help="Fourier binning of the aligned sums (1 = keep the movies' pixel size). The tutorial keeps 1.")
    res_low_A: float = param(
        500.0, title="Alignment: lowest resolution", unit="Å", hard=(20.0, 5000.0), suggest=(100.0, 2000.0),
        tutorial=500.0,
        help="Lowest resolution (largest spacing) used to align the frames: very low frequencies carry gradients "
             "of the illumination rather than the specimen. Tutorial: 500 Å.")
    res_high_A: float = param(
        10.0, title="Alignment: highest resolution", unit="Å", hard=(1.0, 100.0), suggest=(4.0, 30.0),
        tutorial=10.0,
        help="Highest resolution used to align the frames. Finer detail is too noisy in a single frame at "
             "cryo-ET doses. Tutorial: 10 Å.")
    bfactor_A2: float = param(
        -500.0, title="B-factor", unit="Å²", hard=(-10000.0, 0.0), suggest=(-2000.0, -100.0),
        tutorial=-500.0,
        help="Low-pass weighting exp(B k²/4) applied while aligning (negative: damps high frequencies, where the "
             "frames are mostly noise). Tutorial: −500 Å².")
    grid_x: int = param(
        1, title="Motion grid X", unit="1", hard=(1, 16), suggest=(1, 8),
        tutorial=1,
        help="Number of motion-model control points across X. 1 × 1 = one global trajectory for the whole "
             "image; more = local (beam-induced) motion per region, which needs more signal.")
    grid_y: int = param(1, title="Motion grid Y", unit="1", hard=(1, 16), suggest=(1, 8),
                        tutorial=1,
                        help="Number of motion-model control points across Y (see Motion grid X).")
    grid_t: int = param(
        3, title="Motion grid temporal", unit="1", hard=(1, 50), suggest=(2, 10),
        tutorial=3,
        help="Number of control points in time of the smooth trajectory (tutorial 3). Fewer points = a smoother "
             "trajectory that noise cannot bend; more = follows faster changes of the drift.")
    even_odd: bool = param(
        False, title="Even/odd sums",
        help="Also write sums of the even and of the odd frames (for denoising or half-set checks). Tutorial: No.")
    gain_orientation_auto: bool = param(
        True, title="Gain orientation: from the data",
        help="Orient the gain reference as the data show it: the import step compares the fixed pattern of the "
             "raw (uncorrected) frame sums with the gain in each of its 8 possible orientations (flips and "
             "rotations) and keeps the one that explains it, with a confidence. Untick to set the orientation "
             "yourself with the three switches below (the tutorial's gain needs 'flip X'). When the data cannot "
             "decide (e.g. a nearly uniform gain) the switches are used, with a warning.")
    gain_transpose: bool = param(
        False, title="Gain: transpose", enabled_if=[("gain_orientation_auto", "=", False)],
        help="Transpose the gain reference before use (rows ↔ columns). Applied first, then the flips. The "
             "tutorial's gain is not transposed. Used when the orientation is not taken from the data.")
    gain_flip_x: bool = param(
        True, title="Gain: flip X", enabled_if=[("gain_orientation_auto", "=", False)],
        help="Mirror the gain reference left-right before use (x → nx−1−x). The tutorial's gain is written "
             "flipped in X: check that the corrected sums are flat. Used when the orientation is not taken from "
             "the data.")
    gain_flip_y: bool = param(
        False, title="Gain: flip Y", enabled_if=[("gain_orientation_auto", "=", False)],
        help="Mirror the gain reference top-bottom before use (y → ny−1−y). Used when the orientation is not "
             "taken from the data.")
    eer_fraction: int = param(
        16, title="EER fraction", unit="1", hard=(1, 10000), suggest=(4, 200),
        tutorial=16,
        help="Only for EER movies (Falcon 4/4i/C cameras): how many EER fractions (the camera's own, very short "
             "frames) are summed into one frame for the alignment. Each frame should get about 0.1-0.5 e⁻/Å²; "
             "the last fractions that do not fill a frame are left out, as RELION does. The movies are decoded "
             "at the camera's physical pixel size (EER super-resolution is not used). Default 16.")
    eer_group_exposure_e_A2: float | None = param(
        None, title="EER group exposure", unit="e⁻/Å²", hard=(0.001, 100.0), suggest=(0.05, 2.0),
        empty_means="from EER fraction",
        help="Only for EER movies: the exposure each frame should get. When given, the number of fractions per "
             "frame is computed from each movie's dose (mdoc) and replaces 'EER fraction'.")
    estimate_ctf: bool = param(
        True, title="Estimate CTF",
        help="Estimate the defocus and astigmatism of every tilt from its aligned sum (tutorial: Yes).")
    ctf_window_px: int = param(
        512, title="CTF window", unit="px", hard=(64, 2048), suggest=(256, 1024),
        enabled_if=[("estimate_ctf", "=", True)],
        tutorial=512,
        help="Size of the windows whose power spectra are averaged (tutorial 512 px). Larger windows resolve "
             "finer Thon rings (high defocus), smaller ones average more windows (less noise).")
    ctf_res_low_A: float = param(
        30.0, title="CTF: lowest resolution", unit="Å", hard=(5.0, 200.0), suggest=(15.0, 60.0),
        enabled_if=[("estimate_ctf", "=", True)],
        tutorial=30.0,
        help="Lowest resolution used to fit the CTF (tutorial 30 Å): below it the spectrum is dominated by the "
             "background, not by Thon rings.")
    ctf_res_high_A: float = param(
        7.0, title="CTF: highest resolution", unit="Å", hard=(2.0, 50.0), suggest=(4.0, 15.0),
        enabled_if=[("estimate_ctf", "=", True)],
        tutorial=7.0,
        help="Highest resolution used to fit the CTF (tutorial 7 Å). It must stay below the Nyquist frequency "
             "(2 × pixel size).")
    defocus_min_um: float = param(
        0.5, title="Defocus search from", unit="µm", hard=(0.0, 20.0), suggest=(0.2, 3.0),
        enabled_if=[("estimate_ctf", "=", True)],
        tutorial=0.5,
        help="Smallest defocus searched (underfocus positive). Tutorial: 0.5 µm.")
    defocus_max_um: float = param(
        8.0, title="Defocus search to", unit="µm", hard=(0.5, 30.0), suggest=(3.0, 12.0),
        enabled_if=[("estimate_ctf", "=", True)],
        tutorial=8.0,
        help="Largest defocus searched. Tutorial: 8 µm.")
    defocus_grid_x: int = param(
        2, title="Defocus grid X", unit="1", hard=(1, 8), suggest=(1, 4), enabled_if=[("estimate_ctf", "=", True)],
        tutorial=2,
        help="Tiles across X in which the defocus is fitted separately (tutorial 2): on a tilted specimen the "
             "defocus changes across the image, and the tiles measure that gradient.")
    defocus_grid_y: int = param(
        2, title="Defocus grid Y", unit="1", hard=(1, 8), suggest=(1, 4), enabled_if=[("estimate_ctf", "=", True)],
        tutorial=2,
        help="Tiles across Y for the defocus model (tutorial 2).")
    fit_phase: bool = param(
        False, title="Fit phase shift", enabled_if=[("estimate_ctf", "=", True)],
        help="Also fit an additional phase shift (only for data taken with a phase plate). Tutorial: No.")


ORIENTATION_FIELDS = ("gain_transpose", "gain_flip_x", "gain_flip_y")


def _typed_switches(params: MotionCtfParams) -> tuple[bool, bool, bool]:
    return (bool(params.gain_transpose), bool(params.gain_flip_x), bool(params.gain_flip_y))


def gain_orientation_for(params: MotionCtfParams, series: Any) -> tuple[tuple[bool, bool, bool] | None, str, Any]:
    """The gain orientation ``(transpose, flip_x, flip_y)`` the step uses for an imported series, where it comes
    from, and the import step's detection record (or None).

    ``(switches, "from the data", record)`` when the orientation is taken from the data and the import step
    decided it; ``(typed, "typed switches", record)`` when ``gain_orientation_auto`` is off;
    ``(typed, "switches (the data could not decide)", record)`` when the detection was undecided;
    ``(None, "to detect", None)`` when the import step recorded no detection (the run then detects it from
    the movies)."""
    rec = getattr(series, "gain_orientation", None)
    typed = _typed_switches(params)
    if not params.gain_orientation_auto:
        return typed, "typed switches", rec
    if rec is None:
        return None, "to detect", None
    if rec.decided:
        return (bool(rec.transpose), bool(rec.flip_x), bool(rec.flip_y)), "from the data", rec
    return typed, "switches (the data could not decide)", rec


def detect_gain_orientation_from_movies(series: Any, *, check_every: int = 4, enough: float = 20.0) -> Any:
    """:func:`tomoguide.compute.gain.detect_orientation` on the raw sum of a series' movies, for series imported
    without a detection: movies are added in acquisition order and the detection is tried every
    ``check_every`` movies; it stops once the confidence reaches ``enough`` (most series need a few movies),
    else uses them all. Returns the :class:`tomoguide.compute.gain.GainOrientation`."""
    from tomoguide.compute.gain import detect_orientation
    from tomoguide.compute.io.errors import FormatError
    from tomoguide.compute.io.movies import read_gain, read_movie_sum

    stored = read_gain(series.gain, keep_bad=True)
    raw = None
    res = None
    tilts = sorted(series.tilts, key=lambda t: t.acquisition_order)
    for i, t in enumerate(tilts):
        m = read_movie_sum(t.movie)
        raw = m if raw is None else raw + m
        if (i + 1) % check_every == 0 or i + 1 == len(tilts):
            try:
                res = detect_orientation(raw, stored)
            except ValueError as exc:
                raise FormatError(series.gain, "shape", f"does not fit the movies of {series.name}: {exc}") from None
            if res.decided and res.confidence >= enough:
                break
    return res


def motion_ctf_unit(t: Any, g: Any, true_tilt_deg: float, params: MotionCtfParams, gain_path: Any, out: Any,
                    series_name: str, index: int) -> dict[str, Any]:
    """One tilt movie (a unit of :mod:`tomoguide.cluster`): frame alignment of the movie ``t.movie`` (gain and
    defects from ``gain_path``, an ``.npz`` the step wrote, or None), then the CTF fit of its sum when
    ``params.estimate_ctf``. Writes the aligned sum (and the even/odd sums) to ``out`` (``.npz``, through a
    temporary file); returns the shifts, the flags, the CTF row and preview and the timings (small)."""
    from tomoguide.cluster import atomic_output
    from tomoguide.compute.backend import to_numpy
    from tomoguide.compute.ctffit import estimate_ctf, fit_ctf_grid, window_spectra
    from tomoguide.compute.io.movies import eer_fractions_per_frame, read_movie
    from tomoguide.compute.motion import align_movie

    gain = defects = None
    if gain_path is not None:
        with np.load(gain_path) as z:
            gain = z["gain"]
            defects = z["defects"] if z["defects"].size else None
    k = eer_fractions_per_frame(t.n_frames, params.eer_fraction, group_exposure_e_A2=params.eer_group_exposure_e_A2,
                                movie_dose_e_A2=t.dose_e_A2)
    frames = read_movie(t.movie, eer_fractions_per_frame=k)  # k is used for EER movies only
    # an EER movie's t.n_frames counts its fractions: k of them make one frame
    per_frame = 1 if frames.shape[0] == t.n_frames else k
    if frames.shape[1:] != tuple(t.frame_shape_px):
        from tomoguide.compute.io.errors import FormatError

        raise FormatError(t.movie, "frame size", f"{frames.shape[2]}×{frames.shape[1]} px, expected "
                          f"{t.frame_shape_px[1]}×{t.frame_shape_px[0]} as at import")
    t0 = time.perf_counter()
    res = align_movie(
        frames, pixel_size_A=g.pixel_size_A, gain=gain, bfactor_A2=params.bfactor_A2,
        res_band_A=(params.res_low_A, params.res_high_A),
        grid=(params.grid_x, params.grid_y, params.grid_t), prior_dose_e_A2=t.prior_dose_e_A2,
        dose_per_frame_e_A2=t.dose_e_A2 * per_frame / max(t.n_frames, 1),
        voltage_kV=g.optics.voltage_kV, even_odd=params.even_odd, binning=params.binning,
        defects=defects if gain is not None else None)
    t_align = time.perf_counter() - t0
    sums = {"sum": to_numpy(res.aligned_sum).astype(np.float32)}
    if params.even_odd:
        sums["even"] = to_numpy(res.even_sum).astype(np.float32)
        sums["odd"] = to_numpy(res.odd_sum).astype(np.float32)
    with atomic_output(out) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **sums)
    result: dict[str, Any] = {
        "k": int(k), "per_frame": int(per_frame), "n_frames": int(frames.shape[0]),
        "failed": bool(res.failed), "failure_reason": res.failure_reason,
        "shifts_px": np.asarray(res.shifts_px, float).tolist(),
        "raw_shifts_px": np.asarray(res.raw_shifts_px, float).tolist(),
        "peak_z": np.asarray(res.peak_z, float).tolist(), "t_align": t_align, "t_ctf": 0.0}
    if params.estimate_ctf:
        t0 = time.perf_counter()
        px_out = g.pixel_size_A * params.binning
        image = to_numpy(res.unweighted_sum).astype(np.float32)
        kw = dict(defocus_range_A=(params.defocus_min_um * 1e4, params.defocus_max_um * 1e4),
                  res_range_A=(params.ctf_res_low_A, params.ctf_res_high_A), fit_phase=params.fit_phase)
        optics = dict(voltage_kV=g.optics.voltage_kV, cs_mm=g.optics.cs_mm,
                      amplitude_contrast=g.optics.amplitude_contrast)
        geo = dict(tilt_deg=float(true_tilt_deg), tilt_axis_deg=g.tilt_axis_deg,
                   defocus_handedness=g.defocus_handedness)
        # one set of window spectra for the tilt-aware fit and the defocus grid's tiles
        windows = window_spectra(image, pixel_size_A=px_out, box=params.ctf_window_px, **geo)
        fit, spec = estimate_ctf(image, pixel_size_A=px_out, box=params.ctf_window_px, windows=windows, **geo,
                                 **optics, **kw)
        row = ctf_row(series_name, index, t.tilt_deg, fit)
        if params.defocus_grid_x * params.defocus_grid_y > 1 and not fit.failed:
            grid = fit_ctf_grid(image, pixel_size_A=px_out, grid=(params.defocus_grid_y, params.defocus_grid_x),
                                box=params.ctf_window_px, global_fit=fit, windows=windows, **geo, **optics, **kw)
            row["tomoguideDefocusGradientX"] = float(grid.gradient_A_per_px[0])
            row["tomoguideDefocusGradientY"] = float(grid.gradient_A_per_px[1])
            row["tomoguideTiltFromDefocusPlane"] = float(grid.tilt_from_plane_deg)
        result.update(ctf_row=row, ctf_failed=bool(fit.failed), ctf_reason=fit.reason,
                      preview=ctf_preview(spec, fit), t_ctf=time.perf_counter() - t0)
    return result


class MotionCtf(Step):
    id = "motion_ctf"
    title = "Frame alignment and CTF"
    summary = "Align the frames of every tilt movie, sum them with dose weighting, and estimate each tilt's CTF."
    help = (
        "<p><b>What it does.</b> Each tilt image was recorded as a movie of a few frames. During the exposure the "
        "specimen moves (drift and beam-induced motion). This step corrects the frames with the gain reference, "
        "measures the movement by cross-correlating each frame with the others, shifts the frames back and sums "
        "them. The sum is <i>dose weighted</i>: high resolution is taken mostly from the early, less damaged "
        "frames and tilts. Then the power spectrum of each tilt shows Thon rings, from which the defocus and "
        "astigmatism are fitted (the CTF).</p>"
        "<p><b>Why.</b> Uncorrected motion blurs every image; the CTF is needed to correct the phase flips of "
        "the microscope later.</p>"
        "<p><b>A good result.</b> Smooth trajectories of a few pixels, largest in the first frames; a gain-"
        "corrected sum without stripes or a gradient; Thon rings that the fitted rings (right half of the "
        "spectrum) continue; a defocus that changes smoothly with tilt, and a fit resolution that gets worse at "
        "high tilt (the specimen is thicker there).</p>"
        "<p><b>What to check.</b> Tilts marked as failed CTF fits (shown in red: they are suggested for exclusion "
        "later), tilts whose frames could not be aligned (a dark or blank movie: they keep no shifts and are "
        "flagged), jumps in the defocus plot, the gain's orientation in the log (taken from the data, with its "
        "confidence; a corrected sum with stripes or a pattern means a wrong orientation), trajectories that "
        "jump by many pixels.</p>"
    )
    Params = MotionCtfParams
    inputs = ("import_movies",)

    @classmethod
    def origin_for(cls, params: StepParams, params_of: Any = None) -> str | None:
        """"imported" when the import step brings tilt series without movies (entry point a)."""
        imp = params_of("import_movies") if params_of is not None else None
        return "imported" if getattr(imp, "source", "movies") == "tilt series" else None

    def check(self, params: StepParams, ctx: RunContext) -> list[Issue]:
        assert isinstance(params, MotionCtfParams)
        issues: list[Issue] = []
        if params.res_high_A >= params.res_low_A:
            issues.append(Issue("error", "the alignment's highest resolution must be finer (smaller) than its "
                                "lowest resolution", "res_high_A"))
        if params.estimate_ctf:
            if params.ctf_res_high_A >= params.ctf_res_low_A:
                issues.append(Issue("error", "the CTF's highest resolution must be finer (smaller) than its "
                                    "lowest resolution", "ctf_res_high_A"))
            if params.defocus_min_um >= params.defocus_max_um:
                issues.append(Issue("error", "the defocus search must go from a smaller to a larger defocus",
                                    "defocus_max_um"))
        if "import_movies" in ctx.upstream:
            series = load_series(ctx.output("import_movies", "tilt_series"))
            if is_imported(series):  # entry point (a): tilt series without movies, passed through
                return issues + imported_issues(params, series)
            for s in series:
                px = s.geometry.pixel_size_A * params.binning
                if params.estimate_ctf and params.ctf_res_high_A < 2 * px:
                    issues.append(Issue("error", f"{s.name}: the CTF's highest resolution "
                                        f"{params.ctf_res_high_A:g} Å is beyond Nyquist ({2 * px:.2f} Å at "
                                        f"{px:.2f} Å/px)", "ctf_res_high_A"))
                if params.res_high_A < 2 * s.geometry.pixel_size_A:
                    issues.append(Issue("warning", f"{s.name}: the alignment's highest resolution is beyond "
                                        "Nyquist; it is clipped there", "res_high_A"))
                ny, nx = s.tilts[0].frame_shape_px
                if params.estimate_ctf and params.ctf_window_px > min(ny, nx) / params.binning:
                    issues.append(Issue("error", f"{s.name}: the CTF window ({params.ctf_window_px} px) is larger "
                                        f"than the images", "ctf_window_px"))
                if s.gain is None:
                    issues.append(Issue("info", f"{s.name}: no gain reference: the movies are used as they are"))
                    continue
                issues.extend(self._gain_issues(params, s))
        return issues

    @staticmethod
    def _gain_issues(params: MotionCtfParams, s: Any) -> list[Issue]:
        """Warnings about the gain orientation of one series (see :func:`gain_orientation_for`)."""
        from tomoguide.compute.gain import INVERSE_SUFFIX, MIN_CONFIDENCE, orientation_name

        used, source, rec = gain_orientation_for(params, s)
        if rec is None:
            if used is None:
                return [Issue("info", f"{s.name}: the gain's orientation was not recorded at import; it is detected "
                                      "from the movies at the start of the run")]
            return []
        typed = _typed_switches(params)
        found = (bool(rec.transpose), bool(rec.flip_x), bool(rec.flip_y))
        inverse = bool(getattr(rec, "inverted", False)) or str(getattr(rec, "name", "")).endswith(INVERSE_SUFFIX)
        if source == "typed switches" and rec.decided and inverse:
            return [Issue("warning", f"{s.name}: the data show that the gain file holds the inverse of a gain "
                                     f"(confidence {rec.confidence:.1f}); with the switches it is used as it is. "
                                     "Tick 'Gain orientation: from the data' to have it inverted.",
                          "gain_orientation_auto")]
        if source == "typed switches" and rec.decided and rec.confidence >= MIN_CONFIDENCE and found != typed:
            return [Issue("warning", f"{s.name}: the data show the gain as '{orientation_name(*found)}' "
                                     f"(confidence {rec.confidence:.1f}) but the switches say "
                                     f"'{orientation_name(*typed)}': the corrected images will carry the gain's "
                                     "pattern. Tick 'Gain orientation: from the data' or check the switches.",
                          "gain_orientation_auto")]
        if source.startswith("switches"):
            return [Issue("warning", f"{s.name}: the gain's orientation could not be decided from the data "
                                     f"(confidence {rec.confidence:.1f}; best '{orientation_name(*found)}'); the "
                                     f"switches are used ('{orientation_name(*typed)}')", "gain_orientation_auto")]
        return []

    @staticmethod
    def _oriented_gain(s: Any, used: tuple[bool, bool, bool], inverted: bool,
                       ctx: RunContext) -> tuple[np.ndarray, np.ndarray | None]:
        """The series' gain in the movies' orientation ``(ny, nx)`` float32 and its defect mask (pixels where the
        file is zero, negative or not finite; their gain is set to 0 and the frames' values there are replaced),
        or None when there are none. A file holding the inverse of a gain is inverted; a super-resolution gain
        (twice the frames' size) is binned 2×, a counting gain for super-resolution frames (half their size) repeated
        2×2. More than 10 % defects is an error naming the file."""
        from tomoguide.compute.gain import bin_gain_2x, invert_gain
        from tomoguide.compute.io.errors import FormatError
        from tomoguide.compute.io.movies import check_gain_shape, read_gain

        gain = read_gain(s.gain, transpose=used[0], flip_x=used[1], flip_y=used[2], keep_bad=True)
        if inverted:
            gain = invert_gain(gain)
            ctx.log(f"{s.name}: the gain file holds the inverse of a gain (as Thermo Fisher's MRC gain references "
                    "for EER do): inverted")
        fy, fx = s.tilts[0].frame_shape_px
        if gain.shape == (2 * fy, 2 * fx):
            ctx.log(f"{s.name}: super-resolution gain {gain.shape[1]}×{gain.shape[0]} binned 2× to the movies "
                    "(harmonic mean of each 2×2 block)")
            gain = bin_gain_2x(gain)
        elif 2 * gain.shape[0] == fy and 2 * gain.shape[1] == fx:
            ctx.log(f"{s.name}: counting-mode gain {gain.shape[1]}×{gain.shape[0]} for super-resolution movies: each "
                    "gain pixel applied to its 2×2 super-resolution pixels")
            gain = np.repeat(np.repeat(gain, 2, axis=0), 2, axis=1)
        check_gain_shape(gain, s.tilts[0].frame_shape_px, s.gain)
        bad = ~np.isfinite(gain) | (gain <= 0)
        n_bad = int(bad.sum())
        if not n_bad:
            return gain, None
        if n_bad > 0.1 * gain.size:
            raise FormatError(s.gain, "gain", f"{n_bad} of {gain.size} pixels are zero, negative or not finite: "
                              "not a gain reference of these movies?")
        gain = np.where(bad, 0.0, gain).astype(np.float32)
        ctx.log(f"{s.name}: {n_bad} defect pixels in the gain (zero or not finite): replaced by the frame mean")
        return gain, bad

    def estimate(self, params: StepParams, ctx: RunContext) -> Needs:
        assert isinstance(params, MotionCtfParams)
        series = load_series(ctx.output("import_movies", "tilt_series"))
        from tomoguide.compute.io.movies import eer_fractions_per_frame, read_movie_header

        n = sum(len(s.tilts) for s in series)
        ny, nx = series[0].tilts[0].frame_shape_px
        per = ny * nx * 4 / params.binning**2
        if is_imported(series):  # entry point (a): one stack passed on, one image at a time for the CTF
            return Needs(disk_bytes=int(n * per + n * CTF_PREVIEW_PX**2 * 4), memory_bytes=int(ny * nx * 4 * 12))
        disk = n * per * (3 if params.even_odd else 1) + n * CTF_PREVIEW_PX**2 * 4
        frames = 1
        for s in series:  # frames after EER grouping (the header of each series' longest movie)
            t = max(s.tilts, key=lambda t: t.n_frames)
            k = eer_fractions_per_frame(t.n_frames, params.eer_fraction,
                                        group_exposure_e_A2=params.eer_group_exposure_e_A2, movie_dose_e_A2=t.dose_e_A2)
            try:
                frames = max(frames, read_movie_header(t.movie, eer_fractions_per_frame=k)[0])
            except (OSError, ValueError):
                frames = max(frames, t.n_frames)
        return Needs(disk_bytes=int(disk), memory_bytes=int(ny * nx * 4 * frames * 6 + per * len(series[0].tilts)))

    def run(self, params: StepParams, ctx: RunContext) -> StepRun:
        from tomoguide.cluster import Unit
        from tomoguide.compute.gain import INVERSE_SUFFIX, orientation_name
        from tomoguide.compute.io.mrc import write_mrc
        from tomoguide.compute.io.star import write_star

        assert isinstance(params, MotionCtfParams)
        series = load_series(ctx.output("import_movies", "tilt_series"))
        if is_imported(series):  # entry point (a): the stacks passed on, nothing computed but the CTF
            return (yield from pass_through(params, ctx, series, ctx.output("import_movies", "tilt_series")))
        n_total = sum(len(s.tilts) for s in series)
        done = 0
        entries: list[SeriesEntry] = []
        metrics: dict[str, Any] = {"series": {}}
        t_align = t_ctf = 0.0
        n_motion_failed = 0
        for s in series:
            g = s.geometry
            gain = defects = None
            gain_metrics: dict[str, Any] = {}
            if s.gain:
                used, source, rec = gain_orientation_for(params, s)
                confidence = None if rec is None else float(rec.confidence)
                # a file holding the inverse of a gain (found by the detection; the record's name says so too)
                inverted = source == "from the data" and (bool(getattr(rec, "inverted", False))
                                                          or str(getattr(rec, "name", "")).endswith(INVERSE_SUFFIX))
                if used is None:
                    yield Progress(done / max(n_total, 1), f"{s.name}: detecting the gain's orientation")
                    det = detect_gain_orientation_from_movies(s)
                    confidence = float(det.confidence)
                    if det.decided:
                        used, source, inverted = det.switches, "from the data (detected here)", det.inverted
                    else:
                        used, source = _typed_switches(params), "switches (the data could not decide)"
                    ctx.log(f"{s.name}: gain orientation detected from the movies: {det.describe()}")
                gain, defects = self._oriented_gain(s, used, inverted, ctx)
                conf_text = "" if confidence is None else f", confidence {confidence:.1f}"
                name_used = orientation_name(*used) + (INVERSE_SUFFIX if inverted else "")
                ctx.log(f"{s.name}: gain {Path(s.gain).name} used as '{name_used}' ({source}{conf_text})")
                gain_metrics = {"gain_orientation": name_used, "gain_orientation_source": source,
                                "gain_orientation_confidence": None if confidence is None else round(confidence, 2),
                                "gain_defect_pixels": int(defects.sum()) if defects is not None else 0}
            sums, evens, odds, previews, ctf_rows, shift_rows = [], [], [], [], [], []
            failed: list[bool] = []
            motion_failed: list[bool] = []
            px_out = g.pixel_size_A * params.binning
            true_tilts = g.true_tilt_deg()
            eer_logged = False
            # one unit per movie (tomoguide.cluster): the movie and the oriented gain by path, the sums to a scratch
            # file of this run (stacked here, then removed)
            gain_path = None
            if gain is not None:
                gain_path = ctx.out_path(".units", f"{s.name}_gain.npz", mkdir=True)
                np.savez(gain_path, gain=gain, defects=defects if defects is not None else np.zeros(0, bool))
            units = [Unit(f"{s.name} {Path(t.movie).name}",
                          (t, g, float(true_tilts[i]), params, gain_path,
                           ctx.out_path(".units", f"{s.name}_{i:04d}.npz", mkdir=True), s.name, i))
                     for i, t in enumerate(s.tilts)]
            results = yield from ctx.map_units(motion_ctf_unit, units, what=f"{s.name}: frame alignment and CTF")
            for i, (t, unit) in enumerate(zip(s.tilts, units)):
                r = results[unit.name]
                if r["per_frame"] > 1 and not eer_logged:
                    ctx.log(f"{s.name}: EER movies: {t.n_frames} fractions grouped by {r['k']} into {r['n_frames']} "
                            f"frames of {t.dose_e_A2 * r['k'] / t.n_frames:.3f} e⁻/Å²"
                            + (f" ({t.n_frames % r['k']} fractions left out)" if t.n_frames % r['k'] else ""))
                    eer_logged = True
                t_align += r["t_align"]
                t_ctf += r["t_ctf"]
                motion_failed.append(bool(r["failed"]))
                if r["failed"]:
                    ctx.log(f"{s.name}: tilt {t.tilt_deg:+.1f}°: frame alignment failed ({r['failure_reason']}); "
                            "flagged for the exclusion step")
                with np.load(unit.args[5]) as z:
                    sums.append(z["sum"])
                    if params.even_odd:
                        evens.append(z["even"])
                        odds.append(z["odd"])
                for f_i, (sx, sy) in enumerate(r["shifts_px"]):
                    shift_rows.append({"tomoguideViewIndex": i, "rlnTomoNominalStageTiltAngle": t.tilt_deg,
                                       "rlnMicrographFrameNumber": f_i + 1, "rlnMicrographShiftX": float(sx),
                                       "rlnMicrographShiftY": float(sy),
                                       "tomoguideRawShiftX": float(r["raw_shifts_px"][f_i][0]),
                                       "tomoguideRawShiftY": float(r["raw_shifts_px"][f_i][1]),
                                       "tomoguidePeakSignificance": float(r["peak_z"][f_i]),
                                       "tomoguideMotionFailed": int(r["failed"])})
                if params.estimate_ctf:
                    ctf_rows.append(r["ctf_row"])
                    failed.append(bool(r["ctf_failed"]))
                    previews.append(r["preview"])
                    if r["ctf_failed"]:
                        ctx.log(f"{s.name}: tilt {t.tilt_deg:+.1f}°: CTF fit failed ({r['ctf_reason']}); flagged for "
                                "the exclusion step")
                done += 1
            ctx.remove(".units")
            stack = np.stack(sums)
            files: dict[str, str] = {"stack": f"{s.name}.mrc"}
            write_mrc(ctx.out_path(files["stack"]), stack, voxel_size_A=px_out, is_stack=True)
            if params.even_odd:
                files["even"], files["odd"] = f"{s.name}_even.mrc", f"{s.name}_odd.mrc"
                write_mrc(ctx.out_path(files["even"]), np.stack(evens), voxel_size_A=px_out, is_stack=True)
                write_mrc(ctx.out_path(files["odd"]), np.stack(odds), voxel_size_A=px_out, is_stack=True)
            files["frame_shifts"] = f"{s.name}_frame_shifts.star"
            write_star(ctx.out_path(files["frame_shifts"]), {"frame_shifts": pd.DataFrame(shift_rows)})
            flags: dict[str, list[bool]] = {"motion_failed": motion_failed}
            n_motion_failed += int(sum(motion_failed))
            series_metrics: dict[str, Any] = {
                "n_tilts": len(s.tilts),
                "median_total_drift_px": float(np.median([np.hypot(r["rlnMicrographShiftX"], r["rlnMicrographShiftY"])
                                                          for r in shift_rows])),
                "n_motion_failed": int(sum(motion_failed)),
                "motion_failed_tilts_deg": [float(t.tilt_deg) for t, f in zip(s.tilts, motion_failed) if f],
                **gain_metrics,
            }
            if params.estimate_ctf:
                files.update(write_ctf_results(ctx.run_dir, s.name, ctf_rows, previews, g.optics, px_out))
                flags["ctf_failed"] = failed
                summary = ctf_summary(ctf_rows, failed)
                series_metrics.update({"n_ctf_failed": summary.pop("n_failed"), **summary})
            shape = (int(stack.shape[1]), int(stack.shape[2]))
            geo_out = g.at_binning(g.binning * params.binning)
            geo_out = geo_out.model_validate({**geo_out.model_dump(), "image_shape_px": shape})
            entries.append(SeriesEntry(name=s.name, geometry=geo_out, files=files, flags=flags,
                                       info={"pixel_size_A": px_out}))
            metrics["series"][s.name] = series_metrics
        out = SeriesSet(series=entries).save(ctx.run_dir)
        n = max(n_total, 1)
        metrics["time_per_tilt_align_s"] = round(t_align / n, 3)
        metrics["time_per_tilt_ctf_s"] = round(t_ctf / n, 3)
        metrics["n_ctf_failed"] = int(sum(m.get("n_ctf_failed", 0) for m in metrics["series"].values()))
        metrics["n_motion_failed"] = n_motion_failed
        return StepResult(outputs={"series": out}, metrics=metrics,
                          summary=f"aligned {n_total} movies ({metrics['time_per_tilt_align_s']:.2f} s per tilt)"
                          + (f", {n_motion_failed} could not be aligned (flagged)" if n_motion_failed else "")
                          + (f", CTF of every tilt ({metrics['n_ctf_failed']} failed fits flagged)"
                             if params.estimate_ctf else ""))

