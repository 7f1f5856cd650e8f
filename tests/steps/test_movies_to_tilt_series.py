"""Steps 2-4 on the simulator's tiny data set, checked against its ground truth (files on disk)."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pytest

from tomoguide import truth
from tomoguide.compute.io.star import read_star
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


def test_frame_shifts_match_truth(processed: Project, tiny_dataset: Path) -> None:
    err = truth.frame_shift_errors(tiny_dataset / "truth", processed.output_path("motion_ctf", "series"))
    assert err["n_frames"] == 7 * 4 and err["rms_px"] < 0.5 and err["rms_offset_removed_px"] < 0.4, err
    # the drift is real (not all zero) so the comparison means something
    shifts = read_star(tiny_dataset / "truth" / "TS_01" / "TS_01_tilts.star")["frame_shifts"]
    assert float(np.hypot(shifts["rlnMicrographShiftX"], shifts["rlnMicrographShiftY"]).max()) > 1.0


def test_defocus_matches_truth(processed: Project, tiny_dataset: Path) -> None:
    err = truth.defocus_errors(tiny_dataset / "truth", processed.output_path("motion_ctf", "series"))
    # one 512-px window per tiny image: looser than the small preset's targets (bench/movies_to_tilt_series.py)
    assert err["n_tilts"] == 7 and err["median_abs_error_A"] < 300.0 and err["max_abs_error_A"] < 800.0, err
    sset, _ = SeriesSet.load(processed.output_path("motion_ctf", "series"))
    assert sset.series[0].flags["ctf_failed"] == [False] * 7


def test_xray_hits_are_replaced(processed: Project, tiny_dataset: Path) -> None:
    det = truth.xray_detection(tiny_dataset / "truth", processed.output_path("motion_ctf", "series"),
                               processed.output_path("xray_erase", "series"))
    # 16 hit pixels on the tiny preset: all but one (a lone 42-count pixel, 40-110 are drawn, which the frame
    # alignment's sub-pixel shift spreads over 2×2 pixels at ~5 SD, under the 10-SD peak criterion)
    assert det["hit_pixels"] > 0 and det["hit_pixels_replaced_fraction"] >= 0.9, det
    assert det["other_pixels_touched_fraction"] <= 1e-4, det


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
