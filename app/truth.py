"""Comparison of a project's results with the simulator's ground truth (``DIR/truth``, see its summary.json).

Used by the tests, by ``bench/`` and by anyone who wants to see how close a run on the simulated data came.
Each function reads the truth files and one step's outputs and returns plain numbers (JSON-able dicts).

Conventions of the truth files are those written in ``truth/summary.json`` (frame shifts align frame j onto
frame 1; defocus positive = underfocus, in Å, ``tomoguideDefocusU/VAtImageCentre`` at the slab mid-plane seen at
the raw image centre, which is what a fit of the whole image measures; X-ray hits listed per frame, 0-based, in
raw pixel positions; hot pixels in every frame).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tomoguide.compute.io.star import read_ctf_star, read_star
from tomoguide.steps.records import SeriesSet


def _tilts(truth_dir: Path, name: str) -> dict[str, pd.DataFrame]:
    return read_star(Path(truth_dir) / name / f"{name}_tilts.star")


def frame_shift_errors(truth_dir: Path, motion_series: Path) -> dict[str, Any]:
    """Frame-shift errors (px) of a ``motion_ctf`` output against the truth, over all series and movies.

    ``rms_px``: RMS over frames of |ours − truth| with frame 1 = 0 in both; ``rms_offset_removed_px``: the same
    after removing each movie's mean error (an arbitrary common offset of a movie does not blur its sum).
    """
    sset, base = SeriesSet.load(motion_series)
    errs, errs_centred, worst = [], [], []
    for s in sset.series:
        blocks = _tilts(truth_dir, s.name)
        tilts, truth = blocks["tilts"], blocks["frame_shifts"]
        tilt_of = dict(zip(tilts["rlnMicrographMovieName"], tilts["rlnTomoNominalStageTiltAngle"]))
        truth = truth.assign(tilt=truth["rlnMicrographMovieName"].map(tilt_of))
        ours = read_star(s.path("frame_shifts", base))["frame_shifts"]
        m = ours.merge(truth, left_on=["rlnTomoNominalStageTiltAngle", "rlnMicrographFrameNumber"],
                       right_on=["tilt", "rlnMicrographFrameNumber"], suffixes=("", "_true"))
        if len(m) != len(ours):
            raise ValueError(f"{s.name}: {len(ours)} frames in the result, {len(m)} matched in the truth")
        d = np.stack([m["rlnMicrographShiftX"] - m["rlnMicrographShiftX_true"],
                      m["rlnMicrographShiftY"] - m["rlnMicrographShiftY_true"]], axis=1)
        for _, idx in m.groupby("rlnTomoNominalStageTiltAngle").indices.items():
            e = d[idx]
            errs.append(e)
            c = e - e.mean(axis=0)
            errs_centred.append(c)
            worst.append(float(np.sqrt((c**2).sum(axis=1).mean())))
    all_e = np.concatenate(errs)
    all_c = np.concatenate(errs_centred)
    return {"rms_px": float(np.sqrt((all_e**2).sum(axis=1).mean())),
            "rms_offset_removed_px": float(np.sqrt((all_c**2).sum(axis=1).mean())),
            "worst_movie_rms_px": float(max(worst)), "n_movies": len(worst), "n_frames": int(len(all_e))}


def defocus_errors(truth_dir: Path, series: Path, *, max_tilt_deg: float = 45.0,
                   astig_min_A: float = 300.0) -> dict[str, Any]:
    """Defocus errors (Å) of a CTF STAR (``ctf_star`` of each series) against the truth at the image centre.

    Reports, for tilts with |tilt| ≤ ``max_tilt_deg``: the median and maximum absolute error of the mean
    defocus ((U+V)/2), and for tilts whose true astigmatism U−V exceeds ``astig_min_A`` the fraction whose
    astigmatism angle is within 10° (angles compared modulo 180°); plus the same over all tilts.
    """
    sset, base = SeriesSet.load(series)
    rows = []
    for s in sset.series:
        truth = _tilts(truth_dir, s.name)["tilts"].set_index("rlnTomoNominalStageTiltAngle")
        fit = read_ctf_star(s.path("ctf_star", base)).set_index("rlnTomoNominalStageTiltAngle")
        for tilt, r in fit.iterrows():
            t = truth.loc[tilt]
            true_u, true_v = float(t["tomoguideDefocusUAtImageCentre"]), float(t["tomoguideDefocusVAtImageCentre"])
            d_angle = (float(r["rlnDefocusAngle"]) - float(t["rlnDefocusAngle"]) + 90.0) % 180.0 - 90.0
            rows.append({"series": s.name, "tilt": float(tilt),
                         "error_A": 0.5 * (r["rlnDefocusU"] + r["rlnDefocusV"]) - 0.5 * (true_u + true_v),
                         "true_astig_A": true_u - true_v, "angle_error_deg": abs(d_angle),
                         "failed": bool(r.get("tomoguideCtfFailed", 0))})
    df = pd.DataFrame(rows)
    sel = df[df["tilt"].abs() <= max_tilt_deg + 1e-6]
    astig = sel[sel["true_astig_A"] > astig_min_A]
    return {
        "n_tilts": int(len(df)),
        "median_abs_error_A": float(sel["error_A"].abs().median()),
        "max_abs_error_A": float(sel["error_A"].abs().max()),
        "median_abs_error_all_tilts_A": float(df["error_A"].abs().median()),
        "max_abs_error_all_tilts_A": float(df["error_A"].abs().max()),
        "astig_angle_within_10deg_fraction": float((astig["angle_error_deg"] <= 10).mean()) if len(astig) else None,
        "n_astig_tilts": int(len(astig)),
        "n_failed": int(df["failed"].sum()),
        "max_tilt_deg": max_tilt_deg,
    }


def xray_detection(truth_dir: Path, motion_series: Path, xray_series: Path) -> dict[str, Any]:
    """How many true X-ray hit pixels and hot pixels the ``xray_erase`` step replaced, and how many others.

    A hit pixel recorded in frame f at raw (y, x) lies in the aligned sum at (y, x) + that frame's true
    aligning shift; it counts as replaced when the mask is set within 1 px of there. "Other pixels touched"
    are replaced pixels farther than 2 px from every true hit and hot pixel, as a fraction of all pixels.
    """
    import mrcfile

    sset, base = SeriesSet.load(xray_series)
    hot = pd.read_csv(Path(truth_dir) / "hot_pixels.csv")
    found = total = other = n_pix = 0
    for s in sset.series:
        blocks = _tilts(truth_dir, s.name)
        shift = {(r.rlnMicrographMovieName.split("/")[-1], int(r.rlnMicrographFrameNumber)):
                 (r.rlnMicrographShiftX, r.rlnMicrographShiftY) for r in blocks["frame_shifts"].itertuples()}
        hits = pd.read_csv(Path(truth_dir) / s.name / f"{s.name}_xray_hits.csv")
        with mrcfile.open(s.path("mask", base)) as m:
            mask = m.data.astype(bool)
        n_views, ny, nx = mask.shape
        near = np.zeros_like(mask)
        for h in hits.itertuples():
            sx, sy = shift[(h.movie, int(h.frame) + 1)]
            y, x = int(round(h.y + sy)), int(round(h.x + sx))
            v = int(h.tilt_index)
            total += 1
            found += bool(mask[v, max(y - 1, 0):y + 2, max(x - 1, 0):x + 2].any())
            near[v, max(y - 2, 0):y + 3, max(x - 2, 0):x + 3] = True
        # hot pixels were replaced before alignment by the frame alignment (a defect map), or smeared along the
        # drift: do not count replaced pixels near them as false
        for h in hot.itertuples():
            near[:, max(h.y - 4, 0):h.y + 5, max(h.x - 4, 0):h.x + 5] = True
        other += int((mask & ~near).sum())
        n_pix += mask.size
    return {"hit_pixels": total, "hit_pixels_replaced_fraction": found / total if total else None,
            "other_pixels_touched_fraction": other / n_pix, "other_pixels_touched": other}
