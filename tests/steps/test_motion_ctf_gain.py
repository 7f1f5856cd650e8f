"""Frame alignment step: the gain's orientation from the data (and the typed switches), movies that cannot be
aligned flagged, EER movies grouped into frames. Checked against the simulator's truth and known counts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from tomoguide.compute.io.star import read_star
from tomoguide.project import Project
from tomoguide.runner import StepRun, run_to_end
from tomoguide.steps.records import SeriesSet

NO_CTF = {"estimate_ctf": False}


@pytest.fixture(scope="module")
def dark_copy(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The tiny preset's data with one movie (+20°) recorded at 3 % of its dose (binomial thinning of its counts
    = Poisson counts at 0.03 × the dose, as a dark view); returns (data folder, dark movie name)."""
    data = tmp_path_factory.mktemp("dark") / "data"
    shutil.copytree(tiny_dataset / "data", data)
    victim = next(data.glob("TS_01/*_20.0.mrc"))
    with mrcfile.open(victim, mode="r+") as m:
        m.data[...] = np.random.default_rng(5).binomial(np.asarray(m.data), 0.03)
    return data, victim.name


@pytest.fixture(scope="module")
def aligned(dark_copy: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> Project:
    data, _ = dark_copy
    proj = Project.create(tmp_path_factory.mktemp("mc") / "proj",
                          params={"import_movies": {"files_dir": str(data)}, "motion_ctf": NO_CTF})
    for step in ("import_movies", "motion_ctf"):
        st = run_to_end(StepRun(proj, step))
        assert st.status == "done", (step, st.error)
    yield proj
    proj.close()


def test_gain_orientation_taken_from_the_data(aligned: Project, tiny_dataset: Path) -> None:
    from tomoguide.compute.gain import orientation_name

    summary = json.loads((tiny_dataset / "truth" / "summary.json").read_text())
    g = summary.get("planted", {}).get("gain", {"transpose": False, "flip_x": True, "flip_y": False})
    true_name = orientation_name(g["transpose"], g["flip_x"], g["flip_y"])
    assert true_name == "flip X"  # the tiny preset's gain, stored flipped in X like the tutorial's
    st = aligned.data.steps["motion_ctf"]
    m = st.metrics["series"]["TS_01"]
    assert m["gain_orientation"] == true_name and m["gain_orientation_source"] == "from the data"
    assert m["gain_orientation_confidence"] > 20.0
    assert any(f"used as '{true_name}' (from the data, confidence" in line for line in st.log)
    # typed switches that contradict a confident detection: a warning naming the switch
    aligned.set_params("motion_ctf", {"gain_orientation_auto": False, "gain_flip_x": False, "gain_flip_y": True})
    issues = StepRun(aligned, "motion_ctf").check_issues()
    warn = [i for i in issues if i.level == "warning" and i.field == "gain_orientation_auto"]
    assert len(warn) == 1 and "'flip X'" in warn[0].message and "'flip Y'" in warn[0].message, issues
    # typed switches that agree: no warning
    aligned.set_params("motion_ctf", {"gain_flip_x": True, "gain_flip_y": False})
    assert not [i for i in StepRun(aligned, "motion_ctf").check_issues() if i.field == "gain_orientation_auto"]
    aligned.set_params("motion_ctf", {"gain_orientation_auto": True})


def test_dark_movie_flagged_others_aligned(aligned: Project, dark_copy: tuple[Path, str],
                                          tiny_dataset: Path) -> None:
    _, dark_name = dark_copy
    st = aligned.data.steps["motion_ctf"]
    sset, base = SeriesSet.load(aligned.output_path("motion_ctf", "series"))
    entry = sset.series[0]
    tilts = entry.geometry.tilt_angles_deg
    flags = entry.flags["motion_failed"]
    assert [t for t, f in zip(tilts, flags) if f] == [20.0]
    assert st.metrics["n_motion_failed"] == 1 and st.metrics["series"]["TS_01"]["motion_failed_tilts_deg"] == [20.0]
    assert any("tilt +20.0°: frame alignment failed (weak correlation peaks" in line for line in st.log)
    shifts = read_star(entry.path("frame_shifts", base))["frame_shifts"]
    dark = shifts[shifts["rlnTomoNominalStageTiltAngle"] == 20.0]
    assert (dark[["rlnMicrographShiftX", "rlnMicrographShiftY"]].to_numpy() == 0.0).all()
    assert (dark["tomoguideMotionFailed"] == 1).all()
    # the other movies keep their accuracy against the simulator's truth
    truth = read_star(tiny_dataset / "truth" / "TS_01" / "TS_01_tilts.star")
    ft = truth["frame_shifts"]
    errs = []
    for angle in [t for t, f in zip(tilts, flags) if not f]:
        mine = shifts[shifts["rlnTomoNominalStageTiltAngle"] == angle].sort_values("rlnMicrographFrameNumber")
        name = truth["tilts"].loc[truth["tilts"]["rlnTomoNominalStageTiltAngle"] == angle,
                                  "rlnMicrographMovieName"].iloc[0]
        assert dark_name not in name
        tr = ft[ft["rlnMicrographMovieName"] == name].sort_values("rlnMicrographFrameNumber")
        e = (mine[["rlnMicrographShiftX", "rlnMicrographShiftY"]].to_numpy()
             - tr[["rlnMicrographShiftX", "rlnMicrographShiftY"]].to_numpy())
        errs.append(np.sum((e - e.mean(axis=0)) ** 2, axis=1))
    assert float(np.sqrt(np.mean(np.concatenate(errs)))) < 0.3


def test_preview_shows_the_failed_movie_and_the_gain(qtbot, aligned: Project) -> None:  # type: ignore[no-untyped-def]
    from PySide6.QtWidgets import QApplication

    from tomoguide.pages.previews import make_preview

    preview = make_preview(aligned, "motion_ctf")
    qtbot.addWidget(preview)
    preview.resize(1000, 700)
    preview.show()
    QApplication.processEvents()
    assert "gain flip X (from the data, confidence" in preview.viewer.title_label.text()
    tilts = list(aligned.data.steps["motion_ctf"].metrics["series"]["TS_01"]["motion_failed_tilts_deg"])
    sset, _ = SeriesSet.load(aligned.output_path("motion_ctf", "series"))
    angles = sset.series[0].geometry.tilt_angles_deg
    preview.select_view(angles.index(tilts[0]))
    assert "Frames not aligned" in preview.tilt_info.text()
    preview.select_view(angles.index(0.0))
    assert "Frames not aligned" not in preview.tilt_info.text()


def test_orientation_detected_in_the_step_when_import_recorded_none(aligned: Project,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A series imported without a detection (the import could not run it): the step detects the orientation
    from the movies itself, stopping once it is sure."""
    from tomoguide.steps import motion_ctf

    original = motion_ctf.load_series

    def without_record(path: Path) -> list:
        return [s.model_copy(update={"gain_orientation": None}) for s in original(path)]

    series = without_record(aligned.output_path("import_movies", "tilt_series"))
    params = motion_ctf.MotionCtfParams()
    assert motion_ctf.gain_orientation_for(params, series[0]) == (None, "to detect", None)
    det = motion_ctf.detect_gain_orientation_from_movies(series[0])
    assert det.name == "flip X" and det.decided and det.confidence >= 20.0
    monkeypatch.setattr(motion_ctf, "load_series", without_record)
    issues = StepRun(aligned, "motion_ctf").check_issues()
    assert any("detected from the movies at the start of the run" in i.message for i in issues), issues
    aligned.set_params("motion_ctf", {"binning": 2.0})  # a new run
    st = run_to_end(StepRun(aligned, "motion_ctf"))
    assert st.status == "done", st.error
    m = st.metrics["series"]["TS_01"]
    assert m["gain_orientation"] == "flip X" and m["gain_orientation_source"] == "from the data (detected here)"
    assert m["gain_orientation_confidence"] == pytest.approx(det.confidence, abs=0.01)  # rounded in the metrics
    assert any("gain orientation detected from the movies: flip X" in line for line in st.log)


def test_inverse_gain_with_defect_pixels(tiny_dataset: Path, tmp_path: Path) -> None:
    """The tiny preset's gain replaced by its inverse (a sensitivity map, as Thermo Fisher's MRC gain references
    for EER are), still stored flipped in X, with 25 defect pixels (0): found as the inverse in the
    right orientation, inverted, the defects replaced; the corrected sums are as flat as with the true gain."""
    from tomoguide.compute.io import movies
    from tomoguide.compute.io.mrc import write_mrc

    data = tmp_path / "data"
    shutil.copytree(tiny_dataset / "data", data)
    stored = movies.read_gain(data / "gain.mrc")  # as stored (flipped in X)
    inverse = (1.0 / stored).astype(np.float32)
    rng = np.random.default_rng(9)
    ys, xs = rng.integers(0, stored.shape[0], 25), rng.integers(0, stored.shape[1], 25)
    inverse[ys, xs] = 0.0
    write_mrc(data / "gain.mrc", inverse, voxel_size_A=2.0)
    proj = Project.create(tmp_path / "proj", params={"import_movies": {"files_dir": str(data)}, "motion_ctf": NO_CTF})
    for step in ("import_movies", "motion_ctf"):
        st = run_to_end(StepRun(proj, step))
        assert st.status == "done", (step, st.error)
    m = st.metrics["series"]["TS_01"]
    assert m["gain_orientation"] == "flip X (inverse gain)" and m["gain_orientation_source"] == "from the data", m
    n_bad = len({(int(y), int(x)) for y, x in zip(ys, xs)})
    assert m["gain_defect_pixels"] == n_bad
    assert any("holds the inverse of a gain" in line for line in st.log)
    # the corrected sums are flat: the gain's column stripes are gone as with the true gain (flip X of the file)
    sset, base = SeriesSet.load(proj.output_path("motion_ctf", "series"))
    with mrcfile.open(sset.series[0].path("stack", base)) as f:
        total = np.asarray(f.data, dtype=np.float64).sum(axis=0)
    raw = sum(movies.read_movie(p).astype(np.float64).sum(axis=0) for p in sorted(data.glob("TS_01/*.mrc")))

    def stripes(img: np.ndarray) -> float:
        c = img.mean(axis=0)
        return float(c.std() / c.mean())

    right, wrong = stripes(raw * stored[:, ::-1]), stripes(raw * stored)
    assert stripes(total) < 1.3 * right and stripes(total) < 0.5 * wrong, (stripes(total), right, wrong)
    proj.close()


def _eer_session(folder: Path, session_writer, n_fractions: int) -> list[np.ndarray]:
    """The hand-written mini session (two 5-tilt series of 3-frame MRC movies, 64 × 80 px) with every movie
    re-written as an EER movie of ``n_fractions`` fractions; returns the counts summed over each movie, in
    file-name order."""
    eer = pytest.importorskip("tomoguide.compute.io.eer")
    session_writer(folder)
    rng = np.random.default_rng(3)
    sums = []
    for movie in sorted(folder.glob("TS_*.mrc")):
        with mrcfile.open(movie) as m:
            counts = np.asarray(m.data, dtype=np.int64).sum(axis=0)
        counts = np.minimum(counts, n_fractions)
        sums.append(counts)
        eer.write_eer(movie.with_suffix(".eer"), eer.encode_counts(counts, n_fractions, rng), counts.shape)
        movie.unlink()
    for mdoc in folder.glob("*.mdoc"):
        text = mdoc.read_text()
        mdoc.write_text("\n".join(line.replace(".mrc", ".eer") if line.startswith("SubFramePath") else line
                                  for line in text.split("\n")))
    return sums


@pytest.mark.parametrize("group", [{"eer_fraction": 16}, {"eer_group_exposure_e_A2": 0.5}],
                         ids=["fraction", "group_exposure"])
def test_eer_movies_grouped_into_frames(tmp_path: Path, session_writer, group: dict) -> None:
    """48 fractions per movie (3 e⁻/Å² per tilt: 0.0625 e⁻/Å² each): 16 per frame = 3 frames; a 0.5 e⁻/Å² group
    exposure = 8 fractions = 6 frames. The counts are kept: each aligned sum's mean is the movie's count mean."""
    folder = tmp_path / "session"
    sums = _eer_session(folder, session_writer, 48)
    proj = Project.create(tmp_path / "proj", params={
        "import_movies": {"files_dir": str(folder)},
        "motion_ctf": {**NO_CTF, **group}})
    for step in ("import_movies", "motion_ctf"):
        st = run_to_end(StepRun(proj, step))
        assert st.status == "done", (step, st.error)
    n_frames = 3 if "eer_fraction" in group else 6
    k = 48 // n_frames
    assert any(f"48 fractions grouped by {k} into {n_frames} frames of {3.0 * k / 48:.3f} e⁻/Å²" in line
               for line in st.log), st.log
    sset, base = SeriesSet.load(proj.output_path("motion_ctf", "series"))
    assert len(sset.series) == 2
    shifts = read_star(sset.series[0].path("frame_shifts", base))["frame_shifts"]
    assert shifts.groupby("tomoguideViewIndex").size().tolist() == [n_frames] * 5
    with mrcfile.open(sset.series[0].path("stack", base)) as m:
        stack = np.asarray(m.data, dtype=np.float64)
    # angle order of TS_01's movies (-6, -3, 0, 3, 6) vs file-name order (acquisition order 0, 3, -3, -6, 6)
    by_name = dict(zip(["0.0", "3.0", "-3.0", "-6.0", "6.0"], sums[:5]))
    for view, angle in enumerate(sset.series[0].geometry.tilt_angles_deg):
        expected = by_name[f"{angle:.1f}"].mean()
        # (to 1.5 %: pixels bright in every frame, e.g. of the stationary square, are taken for hot pixels and
        # replaced; a lost group would cost a sixth or a third of the counts; exact grouping: test_movies_eer.py)
        assert stack[view].mean() == pytest.approx(expected, rel=0.015)
    proj.close()


def test_simulated_eer_session_with_a_turned_gain_and_a_dark_view(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The simulator's tiny preset as Falcon EER movies (16 fractions per simulated frame), the gain stored
    transposed and flipped in Y, the +20° view recorded at 3 % of the dose: with default parameters the step
    groups the fractions back into the simulated frames, uses the planted gain orientation, flags the dark view
    only, and aligns the others to the simulator's frame shifts."""
    from tomoguide import synth
    from tomoguide.compute.gain import orientation_name

    root = tmp_path_factory.mktemp("tiny_eer")
    sim = synth.PRESETS["tiny"].model_copy(update={
        "movie_format": "eer", "gain_transpose": True, "gain_flip_x": False, "gain_flip_y": True,
        "dark_view_tilts_deg": [20.0], "seed": 31})
    synth.generate(root, sim)
    planted = json.loads((root / "truth" / "summary.json").read_text())["planted"]
    g = planted["gain"]
    true_gain = orientation_name(g["transpose"], g["flip_x"], g["flip_y"])
    assert true_gain == "transpose + flip Y" and planted["eer_fractions_per_frame"] == 16
    proj = Project.create(root / "proj", params={"import_movies": {"files_dir": str(root / "data")},
                                                 "motion_ctf": NO_CTF})
    for step in ("import_movies", "motion_ctf"):
        st = run_to_end(StepRun(proj, step))
        assert st.status == "done", (step, st.error)
    m = st.metrics["series"]["TS_01"]
    assert m["gain_orientation"] == true_gain and m["gain_orientation_source"] == "from the data", m
    assert any("64 fractions grouped by 16 into 4 frames" in line for line in st.log), st.log
    dark = [v["nominal_tilt_deg"] for v in planted["dark_views"]["TS_01"]]
    assert m["motion_failed_tilts_deg"] == dark == [20.0]
    sset, base = SeriesSet.load(proj.output_path("motion_ctf", "series"))
    shifts = read_star(sset.series[0].path("frame_shifts", base))["frame_shifts"]
    truth = read_star(root / "truth" / "TS_01" / "TS_01_tilts.star")
    errs = []
    for _, row in truth["tilts"].iterrows():
        angle = float(row["rlnTomoNominalStageTiltAngle"])
        if angle in dark:
            continue
        mine = shifts[shifts["rlnTomoNominalStageTiltAngle"] == angle].sort_values("rlnMicrographFrameNumber")
        tr = truth["frame_shifts"]
        tr = tr[tr["rlnMicrographMovieName"] == row["rlnMicrographMovieName"]].sort_values("rlnMicrographFrameNumber")
        e = (mine[["rlnMicrographShiftX", "rlnMicrographShiftY"]].to_numpy()
             - tr[["rlnMicrographShiftX", "rlnMicrographShiftY"]].to_numpy())
        errs.append(np.sum((e - e.mean(axis=0)) ** 2, axis=1))
    assert len(errs) == 6 and float(np.sqrt(np.mean(np.concatenate(errs)))) < 0.3
    proj.close()


@pytest.mark.parametrize("movie_shape", [(8, 12), (32, 48)])
def test_gain_of_other_sampling_fits_the_movies(tmp_path: Path, movie_shape: tuple[int, int]) -> None:
    """A 16 × 24 gain for counting movies (16 × 24), super-resolution movies with a counting gain (32 × 48:
    each gain pixel repeated over its 2 × 2 sub-pixels) and counting movies with a super-resolution gain (8 × 12:
    2 × 2 blocks combined by their harmonic mean, the gain of the summed counts)."""
    from types import SimpleNamespace

    from tomoguide.compute.io.mrc import write_mrc
    from tomoguide.steps.motion_ctf import MotionCtf

    gain = np.random.default_rng(3).uniform(0.5, 1.5, (16, 24)).astype(np.float32)
    write_mrc(tmp_path / "gain.mrc", gain, voxel_size_A=1.0)
    s = SimpleNamespace(name="TS_01", gain=tmp_path / "gain.mrc",
                        tilts=[SimpleNamespace(frame_shape_px=movie_shape)])
    ctx = SimpleNamespace(log=lambda text: None)
    out, bad = MotionCtf._oriented_gain(s, (False, False, False), False, ctx)
    assert bad is None and out.shape == movie_shape
    if movie_shape == (32, 48):
        np.testing.assert_array_equal(out[::2, ::2], gain)
        np.testing.assert_array_equal(out[1::2, 1::2], gain)
    else:
        blocks = gain.reshape(8, 2, 12, 2)
        np.testing.assert_allclose(out, 4.0 / (1.0 / blocks).sum(axis=(1, 3)), rtol=1e-5)
