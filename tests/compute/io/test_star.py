"""RELION STAR files: the real files in shared/data, and round trips of every writer."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tomoguide.compute.io import star
from tomoguide.compute.io.errors import FormatError, FormatWarning


def _shared_data() -> Path:
    """``<repo>/../shared/data``, else the bundled subset ``tests/data`` (a fresh clone; see tests/data/SOURCES.md)."""
    here = Path(__file__).resolve()
    repo = next((p for p in here.parents if (p / "pyproject.toml").is_file()), here.parents[3])
    return repo.parent / "shared" / "data" if (repo.parent / "shared" / "data").is_dir() else repo / "tests" / "data"


DATA = _shared_data()
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"shared test data not found at {DATA}")

CTF_STAR = DATA / "ctf/alisterburt__tomo_preprocessing/test_data/ctffind/relion_ctf_estimation_output.star"
IMPORT_GLOBAL = DATA / "relion/alisterburt__tomo_preprocessing/test_data/import/tilt_series.star"
IMPORT_TS = DATA / "relion/alisterburt__tomo_preprocessing/test_data/import/tilt_series/my_prefix_TS_01.star"
MOTION = DATA / "relion/alisterburt__tomo_preprocessing/test_data/motion_correction/relion_motion_correction_output.star"
WARP_TOMOS = DATA / "relion/pypi__cryoet-alignment-0.2.0/matching_tomograms.star"
TILTSTACK = DATA / "relion/pypi__tiltstack-0.0.1rc6/corrected_micrographs.star"


def _loop_rows(path: Path, block: str) -> list[list[str]]:
    """Independent minimal parser: the data rows of loop ``data_<block>`` split on whitespace."""
    rows: list[list[str]] = []
    inside = False
    in_loop = False
    for line in path.read_text().splitlines():
        s = line.strip()
        if s.startswith("data_"):
            inside = s == f"data_{block}"
            in_loop = False
            continue
        if not inside or not s or s.startswith("#"):
            continue
        if s == "loop_":
            in_loop = True
            continue
        if s.startswith("_"):
            continue
        if in_loop:
            rows.append(s.split())
    return rows


def _all_star_files() -> list[Path]:
    return sorted(DATA.rglob("*.star")) if DATA.is_dir() else []


# ---- every STAR file in shared/data -------------------------------------------------------------------


@pytest.mark.parametrize("path", _all_star_files(), ids=lambda p: p.name)
def test_every_shared_star_reads_and_is_described(path: Path) -> None:
    blocks = star.read_star(path)
    assert blocks, "no blocks"
    info = star.describe(path)
    assert info["kind"] != "unknown"
    assert set(info["blocks"]) == set(blocks)
    for name, block in blocks.items():
        if isinstance(block, pd.DataFrame):
            raw = _loop_rows(path, name)
            assert info["blocks"][name]["rows"] == len(block) == len(raw)
            assert info["blocks"][name]["columns"] == list(block.columns)
            # first column of the first row agrees with the raw text
            first = block.iloc[0, 0]
            if isinstance(first, str):
                assert first == raw[0][0]
            else:
                assert float(first) == pytest.approx(float(raw[0][0]))


def test_ctffind_star_of_empiar_10164_ts01() -> None:
    df = star.read_ctf_star(CTF_STAR)
    raw = _loop_rows(CTF_STAR, "micrographs")
    assert len(df) == len(raw) == 41
    first = df.iloc[0]
    assert first["rlnDefocusU"] == pytest.approx(39224.3, abs=0.05)
    assert first["rlnDefocusV"] == pytest.approx(39029.8, abs=0.05)
    assert first["rlnDefocusAngle"] == pytest.approx(-15.48, abs=0.005)
    # astigmatism column is U - V
    assert np.allclose(df["rlnCtfAstigmatism"], df["rlnDefocusU"] - df["rlnDefocusV"], atol=1e-3)
    # optics merged into each row
    assert (df["rlnVoltage"] == 300).all() and (df["rlnMicrographPixelSize"] == 1.35).all()
    # most tilts near 3.9 µm; the failed fit (< 1 µm) is the one outlier
    mean = (df["rlnDefocusU"] + df["rlnDefocusV"]) / 2
    assert 38000 < mean.median() < 40000
    outliers = df[mean < 10000]
    assert len(outliers) == 1 and "TS_01_039_-60" in outliers["rlnMicrographName"].iloc[0]
    facts = star.describe(CTF_STAR)["facts"]
    assert star.describe(CTF_STAR)["kind"] == "ctf"
    assert facts["n_tilts"] == 41
    assert facts["defocus_range_A"] == pytest.approx([mean.min(), mean.max()])
    assert facts["pixel_size_A"] == 1.35


def test_relion4_import_global_star() -> None:
    t = star.read_tomograms_star(IMPORT_GLOBAL)
    assert t.names == ["my_prefix_TS_01"]
    row = t.tomograms.iloc[0]
    # optics values merged by optics group
    assert row["rlnVoltage"] == 300 and row["rlnSphericalAberration"] == pytest.approx(2.7)
    assert row["rlnAmplitudeContrast"] == pytest.approx(0.07)
    assert t.pixel_size_A("my_prefix_TS_01") == pytest.approx(1.35)
    assert row["rlnTomoTiltSeriesStarFile"].endswith("my_prefix_TS_01.star")
    assert "rlnTomoHand" in t.missing_relion5 and "rlnTomoName" not in t.missing_relion5
    info = star.describe(IMPORT_GLOBAL)
    assert info["kind"] == "tomograms" and info["facts"]["n_tomograms"] == 1


def test_relion4_import_tilt_series_star() -> None:
    df = star.read_tilt_series_star(IMPORT_TS)
    assert df.attrs["block"] == "tilt_images"
    assert len(df) == 41
    tilt = df["rlnTomoNominalStageTiltAngle"].to_numpy()
    assert tilt.min() == pytest.approx(-60, abs=0.01) and tilt.max() == pytest.approx(60, abs=0.01)
    # ±3° steps: sorted tilts are 3° apart
    assert np.allclose(np.diff(np.sort(tilt)), 3.0, atol=0.01)
    assert (df["rlnTomoNominalTiltAxisAngle"] == 85.3).all()
    # dose-symmetric: pre-exposure grows with acquisition index, 0 at the first (0°) tilt
    order = np.argsort(df["rlnTomoTiltMovieIndex"].to_numpy())
    pre = df["rlnMicrographPreExposure"].to_numpy()[order]
    assert pre[0] == 0 and abs(tilt[order][0]) < 0.01 and np.all(np.diff(pre) > 0)
    # the movie name encodes the nominal tilt
    for name, t in zip(df["rlnTomoTiltMovieFile"], tilt):
        assert float(re.search(r"_(-?\d+\.\d)\.mrc$", name).group(1)) == pytest.approx(t, abs=0.01)
    facts = star.describe(IMPORT_TS)["facts"]
    assert facts["n_tilts"] == 41
    assert facts["tilt_range_deg"] == pytest.approx([tilt.min(), tilt.max()])
    assert facts["dose_per_tilt_e_per_A2"] == pytest.approx(np.median(np.diff(np.sort(pre))))
    assert facts["dose_per_tilt_e_per_A2"] == pytest.approx(3.0, abs=0.05)
    assert facts["tilt_axis_deg"] == pytest.approx(85.3)


def test_motion_correction_star_is_not_a_tilt_series() -> None:
    info = star.describe(MOTION)
    assert info["kind"] == "micrographs" and info["facts"]["n_micrographs"] == 41
    with pytest.raises(FormatError, match=r"data_micrographs/rlnTomoNominalStageTiltAngle: missing required column"):
        star.read_tilt_series_star(MOTION)
    with pytest.warns(FormatWarning, match="rlnTomoNominalStageTiltAngle"):
        df = star.read_tilt_series_star(MOTION, strict=False)
    assert df["rlnTomoNominalStageTiltAngle"].isna().all() and len(df) == 41
    with pytest.raises(FormatError, match=r"rlnDefocusU"):
        star.read_ctf_star(MOTION)


def test_tiltstack_corrected_micrographs() -> None:
    blocks = star.read_star(TILTSTACK)
    raw = _loop_rows(TILTSTACK, "micrographs")
    mics = blocks["micrographs"]
    assert len(mics) == len(raw)
    assert np.allclose(mics["rlnAccumMotionTotal"], [float(r[4]) for r in raw])
    # total motion = early + late
    assert np.allclose(mics["rlnAccumMotionTotal"], mics["rlnAccumMotionEarly"] + mics["rlnAccumMotionLate"], atol=2e-6)
    info = star.describe(TILTSTACK)
    assert info["kind"] == "micrographs" and info["facts"]["n_micrographs"] == len(raw)


def test_warp_tomograms_star_with_projection_blocks() -> None:
    t = star.read_tomograms_star(WARP_TOMOS)
    assert len(t.names) == 3 and set(t.tilt_blocks) == set(t.names)
    assert all(len(b) == 31 for b in t.tilt_blocks.values())
    assert (t.tomograms[["rlnTomoSizeX", "rlnTomoSizeY", "rlnTomoSizeZ"]].to_numpy() == [4096, 4096, 2000]).all()
    assert (t.tomograms["rlnTomoHand"] == -1).all()
    assert t.pixel_size_A(t.names[0]) == pytest.approx(1.54)
    assert sorted(t.missing_relion5) == ["rlnMicrographOriginalPixelSize", "rlnTomoTiltSeriesStarFile"]
    # projection rows are unit vectors (rotation part of the projection matrix)
    b = t.tilt_blocks[t.names[0]]
    px = np.array([[float(v) for v in s.strip("[]").split(",")] for s in b["rlnTomoProjX"]])
    assert np.allclose(np.linalg.norm(px[:, :3], axis=1), 1.0, atol=1e-5)
    # pre-exposure steps of 3.87 e/Å² (rlnTomoImportFractionalDose)
    pre = np.sort(b["rlnMicrographPreExposure"].to_numpy())
    assert np.allclose(np.diff(pre), 3.87, atol=0.01)
    assert star.describe(WARP_TOMOS)["facts"]["n_tilts"] == {n: 31 for n in t.names}


def test_strict_error_names_file_block_and_column(tmp_path: Path) -> None:
    df = pd.DataFrame({"rlnTomoName": ["a"], "rlnVoltage": [300.0], "rlnTomoTiltSeriesPixelSize": [1.0],
                       "rlnAmplitudeContrast": [0.1]})
    p = tmp_path / "tomograms.star"
    star.write_star(p, {"global": df})
    with pytest.raises(FormatError) as err:
        star.read_tomograms_star(p)
    assert str(err.value) == f"{p}: data_global/rlnSphericalAberration: missing required column"
    with pytest.warns(FormatWarning):
        t = star.read_tomograms_star(p, strict=False)
    assert np.isnan(t.tomograms["rlnSphericalAberration"].iloc[0])
    (tmp_path / "empty.star").write_text("# nothing here\n")
    with pytest.raises(FormatError, match="no data_ block"):
        star.read_star(tmp_path / "empty.star")
    with pytest.raises(FileNotFoundError):
        star.read_star(tmp_path / "missing.star")


# ---- writers: round trips -----------------------------------------------------------------------------


def test_write_star_is_atomic_and_respects_overwrite(tmp_path: Path) -> None:
    p = tmp_path / "a.star"
    star.write_star(p, {"x": pd.DataFrame({"rlnA": [1.5, 2.5]}), "meta": {"rlnB": 3}})
    assert [f.name for f in tmp_path.iterdir()] == ["a.star"]  # no temporary left behind
    back = star.read_star(p)
    assert back["x"]["rlnA"].tolist() == [1.5, 2.5] and back["meta"] == {"rlnB": 3}
    with pytest.raises(FileExistsError):
        star.write_star(p, {"x": pd.DataFrame({"rlnA": [0.0]})}, overwrite=False)
    assert star.read_star(p)["x"]["rlnA"].tolist() == [1.5, 2.5]


def _tomograms_table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "rlnTomoName": ["TS_01", "TS_03"],
            "rlnTomoTiltSeriesStarFile": ["tilt_series/TS_01.star", "tilt_series/TS_03.star"],
            "rlnVoltage": [300.0, 300.0],
            "rlnSphericalAberration": [2.7, 2.7],
            "rlnAmplitudeContrast": [0.1, 0.1],
            "rlnMicrographOriginalPixelSize": [1.35, 1.35],
            "rlnTomoHand": [-1.0, -1.0],
            "rlnTomoTiltSeriesPixelSize": [1.35, 1.35],
            "rlnTomoSizeX": [3710, 3710],
            "rlnTomoSizeY": [3838, 3838],
            "rlnTomoSizeZ": [2000, 2000],
            "rlnTomoTomogramBinning": [6.0, 6.0],
        }
    )


def test_tomograms_round_trip(tmp_path: Path) -> None:
    df = _tomograms_table()
    p = star.write_tomograms_star(tmp_path / "tomograms.star", df)
    t = star.read_tomograms_star(p)
    pd.testing.assert_frame_equal(t.tomograms, df, check_dtype=False)
    assert t.missing_relion5 == [] and t.tilt_blocks == {}
    assert star.describe(p)["facts"]["sizes_px"] == [[3710, 3838, 2000]] * 2
    with pytest.raises(FormatError, match="data_global/rlnTomoHand"):
        star.write_tomograms_star(tmp_path / "bad.star", df.drop(columns="rlnTomoHand"))


def test_tilt_series_round_trip_of_real_ts01(tmp_path: Path) -> None:
    src = star.read_tilt_series_star(IMPORT_TS)
    ts = src.rename(columns={"rlnTomoTiltMovieFile": "rlnMicrographMovieName"}).drop(columns="rlnTomoName")
    ts["rlnTomoXTilt"] = 0.0
    ts["rlnTomoYTilt"] = ts["rlnTomoNominalStageTiltAngle"]
    ts["rlnTomoZRot"] = ts["rlnTomoNominalTiltAxisAngle"]
    ts["rlnTomoXShiftAngst"] = np.linspace(-20, 20, len(ts))
    ts["rlnTomoYShiftAngst"] = np.linspace(5, -5, len(ts))
    p = star.write_tilt_series_star(tmp_path / "TS_01.star", ts, tomo_name="TS_01")
    back = star.read_tilt_series_star(p)
    assert back.attrs["block"] == "TS_01"
    pd.testing.assert_frame_equal(back, ts, check_dtype=False, check_like=False, check_exact=False, atol=1e-6)
    with pytest.raises(FormatError, match="need one of"):
        star.write_tilt_series_star(tmp_path / "x.star", ts.drop(columns="rlnMicrographMovieName"), tomo_name="TS_01")


def test_ctf_round_trip_of_real_estimates(tmp_path: Path) -> None:
    src = star.read_ctf_star(CTF_STAR)
    rows = src[["rlnMicrographName", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle",
                "rlnCtfMaxResolution", "rlnCtfFigureOfMerit"]].copy()
    # nominal tilt from the file name TS_01_<index>_<tilt>_0.mrc
    rows["rlnTomoNominalStageTiltAngle"] = [float(n.split("_")[-2]) for n in rows["rlnMicrographName"]]
    optics = {"rlnOpticsGroupName": "opticsGroup1", "rlnOpticsGroup": 1, "rlnMicrographPixelSize": 1.35,
              "rlnVoltage": 300.0, "rlnSphericalAberration": 2.7, "rlnAmplitudeContrast": 0.1}
    p = star.write_ctf_star(tmp_path / "ctf.star", rows, optics=optics)
    back = star.read_ctf_star(p)
    pd.testing.assert_frame_equal(back[rows.columns], rows, check_dtype=False, atol=1e-6)
    assert (back["rlnVoltage"] == 300).all()
    info = star.describe(p)
    assert info["kind"] == "tilt_series"  # it carries tilt angles, so it is a per-tilt table
    assert info["facts"]["n_tilts"] == 41 and info["facts"]["tilt_range_deg"] == [-60.0, 60.0]
    with pytest.raises(FormatError, match="data_micrographs/rlnCtfFigureOfMerit"):
        star.write_ctf_star(tmp_path / "bad.star", rows.drop(columns="rlnCtfFigureOfMerit"))


def test_particles_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    n = 12
    parts = pd.DataFrame(
        {
            "rlnTomoName": ["TS_01"] * 7 + ["TS_03"] * 5,
            "rlnCenteredCoordinateXAngst": rng.uniform(-2000, 2000, n),
            "rlnCenteredCoordinateYAngst": rng.uniform(-2000, 2000, n),
            "rlnCenteredCoordinateZAngst": rng.uniform(-500, 500, n),
            "rlnAngleRot": rng.uniform(-180, 180, n),
            "rlnAngleTilt": rng.uniform(0, 180, n),
            "rlnAnglePsi": rng.uniform(-180, 180, n),
        }
    )
    optics = {"rlnOpticsGroupName": "optics1", "rlnOpticsGroup": 1, "rlnTomoTiltSeriesPixelSize": 1.35,
              "rlnVoltage": 300.0, "rlnSphericalAberration": 2.7, "rlnAmplitudeContrast": 0.1}
    p = star.write_particles_star(tmp_path / "particles.star", parts, optics, general={"rlnTomoSubTomosAre2DStacks": 0})
    back = star.read_particles_star(p)
    assert back.relion_version == 5 and back.pixel_size_A() == 1.35
    assert back.general == {"rlnTomoSubTomosAre2DStacks": 0}
    pd.testing.assert_frame_equal(back.particles[parts.columns], parts, check_dtype=False, atol=1e-6)
    assert (back.particles["rlnOpticsGroup"] == 1).all()
    info = star.describe(p)
    assert info["kind"] == "particles"
    assert info["facts"] == {"n_particles": 12, "tomograms": {"TS_01": 7, "TS_03": 5}, "relion_version": 5}
    with pytest.raises(FormatError, match="data_optics/rlnTomoTiltSeriesPixelSize"):
        star.write_particles_star(tmp_path / "bad.star", parts, {"rlnVoltage": 300.0})
    with pytest.raises(FormatError, match="missing coordinates"):
        star.write_particles_star(tmp_path / "bad.star", parts.drop(columns="rlnCenteredCoordinateZAngst"), optics)


def test_relion4_particles_with_pixel_coordinates(tmp_path: Path) -> None:
    parts = pd.DataFrame({"rlnMicrographName": ["tomograms/TS_01.mrc"] * 3, "rlnCoordinateX": [10.0, 20.0, 30.0],
                          "rlnCoordinateY": [1.0, 2.0, 3.0], "rlnCoordinateZ": [5.0, 6.0, 7.0]})
    p = tmp_path / "r4.star"
    star.write_star(p, {"optics": pd.DataFrame({"rlnOpticsGroup": [1], "rlnImagePixelSize": [2.7]}),
                        "particles": parts})
    back = star.read_particles_star(p)
    assert back.relion_version == 4 and back.pixel_size_A() == 2.7
    assert back.particles["rlnTomoName"].tolist() == ["TS_01"] * 3  # from rlnMicrographName
    star.write_star(p, {"particles": parts[["rlnMicrographName", "rlnCoordinateX"]]})
    with pytest.raises(FormatError, match="missing coordinates"):
        star.read_particles_star(p)


def test_particles_without_coordinates_permissive(tmp_path: Path) -> None:
    p = tmp_path / "nocoords.star"
    star.write_star(p, {"particles": pd.DataFrame({"rlnTomoName": ["a", "b"], "rlnAngleRot": [1.0, 2.0]})})
    with pytest.raises(FormatError, match=r"data_particles/rlnCenteredCoordinateXAngst: missing coordinates"):
        star.read_particles_star(p)
    with pytest.warns(FormatWarning, match="missing coordinates"):
        back = star.read_particles_star(p, strict=False)
    assert back.particles[list(star.CENTERED_XYZ)].isna().all().all() and len(back.particles) == 2


def test_relion5_warptools_files_are_recognised(shared_data: Path) -> None:
    """WarpTools-2 / RELION 5 particles (2D stacks, no centred coordinates) are RELION 5, and the optimisation set
    names its files."""
    folder = shared_data / "relion5_warptools_particles"
    parts = star.describe(folder / "warptools_test_4-tomos_10-ptcls_box-32_angpix-12.star")
    assert parts["kind"] == "particles" and parts["facts"]["relion_version"] == 5
    assert parts["facts"]["n_particles"] == 40
    opt = star.describe(folder / "warptools_test_4-tomos_10-ptcls_box-32_angpix-12_optimisation_set.star")
    assert opt["kind"] == "optimisation_set"
    assert opt["facts"]["particles_file"] == "warptools_test_4-tomos_10-ptcls_box-32_angpix-12.star"
    assert opt["facts"]["tomograms_file"] == "warptools_test_4-tomos_10-ptcls_box-32_angpix-12_tomograms.star"
