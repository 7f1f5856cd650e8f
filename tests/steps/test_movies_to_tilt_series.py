"""Steps 2-4 on the simulator's tiny data set, checked against its ground truth (files on disk)."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest

from tomoguide.compute.io.star import read_ctf_star, read_star
from tomoguide.demo import demo_import_params
from tomoguide.project import Project
from tomoguide.runner import StepRun, run_to_end
from tomoguide.steps.records import SeriesSet


@pytest.fixture(scope="module")
def processed(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Project:
    proj = Project.create(tmp_path_factory.mktemp("p5") / "proj",
                          params={"import_movies": demo_import_params(tiny_dataset / "data"),
                                  "preprocess_for_alignment": {"binning": 4}})
    for step in ("import_movies", "motion_ctf", "xray_erase", "preprocess_for_alignment"):
        st = run_to_end(StepRun(proj, step))
        assert st.status == "done", (step, st.error)
    yield proj
    proj.close()


def _truth(tiny_dataset: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    blocks = read_star(tiny_dataset / "truth" / "TS_01" / "TS_01_tilts.star")
    return blocks["tilts"], blocks["frame_shifts"]


def test_frame_shifts_match_truth(processed: Project, tiny_dataset: Path) -> None:
    tilts, truth_shifts = _truth(tiny_dataset)
    sset, base = SeriesSet.load(processed.output_path("motion_ctf", "series"))
    ours = read_star(sset.series[0].path("frame_shifts", base))["frame_shifts"]
    assert len(ours) == len(truth_shifts)
    # the truth lists movies in angle order like our views; match by tilt angle and frame number
    truth_shifts = truth_shifts.assign(tilt=truth_shifts["rlnMicrographMovieName"].map(
        dict(zip(tilts["rlnMicrographMovieName"], tilts["rlnTomoNominalStageTiltAngle"]))))
    merged = ours.merge(truth_shifts, left_on=["rlnTomoNominalStageTiltAngle", "rlnMicrographFrameNumber"],
                        right_on=["tilt", "rlnMicrographFrameNumber"], suffixes=("", "_true"))
    assert len(merged) == len(ours)
    err = np.hypot(merged["rlnMicrographShiftX"] - merged["rlnMicrographShiftX_true"],
                   merged["rlnMicrographShiftY"] - merged["rlnMicrographShiftY_true"])
    assert float(np.sqrt(np.mean(err**2))) < 0.5, err.describe()
    # the drift is real (not all zero) so the comparison means something
    assert float(np.hypot(merged["rlnMicrographShiftX_true"], merged["rlnMicrographShiftY_true"]).max()) > 1.0


def test_defocus_matches_truth(processed: Project, tiny_dataset: Path) -> None:
    tilts, _ = _truth(tiny_dataset)
    sset, base = SeriesSet.load(processed.output_path("motion_ctf", "series"))
    fit = read_ctf_star(sset.series[0].path("ctf_star", base))
    assert len(fit) == len(tilts)
    true = tilts.set_index("rlnTomoNominalStageTiltAngle")
    ours = fit.set_index("rlnTomoNominalStageTiltAngle")
    mean_true = 0.5 * (true["tomoguideDefocusUAtImageCentre"] + true["tomoguideDefocusVAtImageCentre"])
    mean_ours = 0.5 * (ours["rlnDefocusU"] + ours["rlnDefocusV"])
    err = (mean_ours - mean_true.reindex(mean_ours.index)).abs()
    assert float(err.median()) < 300.0, err
    assert sset.series[0].flags["ctf_failed"] == [False] * len(tilts)


def test_xray_hits_are_replaced(processed: Project, tiny_dataset: Path) -> None:
    hits = pd.read_csv(tiny_dataset / "truth" / "TS_01" / "TS_01_xray_hits.csv")
    sset, base = SeriesSet.load(processed.output_path("xray_erase", "series"))
    with mrcfile.open(sset.series[0].path("mask", base)) as m:
        mask = m.data.astype(bool)
    tilts, truth_shifts = _truth(tiny_dataset)
    # a hit in frame f lands in the aligned sum where that frame's aligning shift moves it (truth shifts)
    shift = {(r.rlnMicrographMovieName.split("/")[-1], int(r.rlnMicrographFrameNumber)):
             (r.rlnMicrographShiftX, r.rlnMicrographShiftY) for r in truth_shifts.itertuples()}
    found = 0
    for h in hits.itertuples():
        sx, sy = shift[(h.movie, int(h.frame) + 1)]
        y, x = int(round(h.y + sy)), int(round(h.x + sx))
        found += bool(mask[int(h.tilt_index), max(y - 1, 0):y + 2, max(x - 1, 0):x + 2].any())
    assert len(hits) > 0 and found / len(hits) >= 0.95
    assert mask.mean() < 1e-3


def test_binning_keeps_geometry_and_normalises(processed: Project) -> None:
    sset, base = SeriesSet.load(processed.output_path("preprocess_for_alignment", "series"))
    src, src_base = SeriesSet.load(processed.output_path("xray_erase", "series"))
    g, g0 = sset.series[0].geometry, src.series[0].geometry
    assert g.pixel_size_binned_A == pytest.approx(g0.pixel_size_binned_A * 4)
    with mrcfile.open(sset.series[0].path("stack", base)) as m:
        stack = m.data.copy()
        assert float(m.voxel_size.x) == pytest.approx(g.pixel_size_binned_A, rel=1e-4)
    assert stack.shape[1:] == tuple(g.image_shape_px)
    np.testing.assert_allclose(stack.mean(axis=(1, 2)), 0.0, atol=1e-4)
    np.testing.assert_allclose(stack.std(axis=(1, 2)), 1.0, atol=1e-3)
    assert g.tilt_angles_deg == g0.tilt_angles_deg and g.prior_dose_e_A2 == g0.prior_dose_e_A2
