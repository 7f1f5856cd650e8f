"""The command line as a user runs it: new, run, status, inspect, and one-line errors for bad input."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from tomoguide.cli import CliError, main, parse_sets, parse_value


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tomoguide", *args], capture_output=True, text=True, timeout=300)


def test_parse_values_and_sets() -> None:
    assert parse_value("85") == 85 and parse_value("1.5") == 1.5 and parse_value("true") is True
    assert parse_value("") is None and parse_value("/data/x y") == "/data/x y"
    assert parse_sets(["import_movies.tilt_axis_deg=84.5"]) == {"import_movies": {"tilt_axis_deg": 84.5}}
    assert parse_sets(["voltage_kV=200"], default_step="import_movies") == {"import_movies": {"voltage_kV": 200}}
    with pytest.raises(CliError, match="no parameter 'tilt_axis'"):
        parse_sets(["import_movies.tilt_axis=3"])
    with pytest.raises(CliError, match="unknown step"):
        parse_sets(["nostep.x=3"])


def test_new_run_status_and_reopen(tmp_path: Path, mini_session: Path) -> None:
    proj = tmp_path / "proj"
    assert main(["new", str(proj), "--movies", str(mini_session), "--set", "import_movies.pixel_size_A="]) == 0
    r = run_cli("run", str(proj), "--until", "import_movies")
    assert r.returncode == 0, r.stderr
    r = run_cli("status", str(proj), "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    step = info["steps"][0]
    assert step["id"] == "import_movies" and step["status"] == "done"
    assert step["metrics"]["n_series"] == 2 and step["metrics"]["n_tilts"] == 10
    series = step["metrics"]["series"]["TS_01"]
    assert series["tilt_min_deg"] == -6 and series["tilt_max_deg"] == 6 and series["pixel_size_A"] == 2.5
    assert series["dose_per_tilt_e_A2"] == 3.0 and series["tilt_axis_deg"] == 85.0
    assert all(Path(p).exists() for p in step["outputs"].values())
    # a second process reopens the project with identical state; the step is skipped on resume
    before = (proj / "project.json").read_text()
    r = run_cli("run", str(proj), "--until", "import_movies")
    assert r.returncode == 0 and "up to date, skipped" in r.stderr
    after = json.loads((proj / "project.json").read_text())
    assert after["steps"] == json.loads(before)["steps"]
    # changing a parameter marks the step stale and the next run redoes it
    r = run_cli("run", str(proj), "--until", "import_movies", "--set", "import_movies.tilt_axis_deg=84")
    assert r.returncode == 0, r.stderr
    assert json.loads(run_cli("status", str(proj), "--json").stdout)["steps"][0]["metrics"]["series"]["TS_01"][
        "tilt_axis_deg"] == 84


def test_out_of_range_value_is_refused_with_reason(tmp_path: Path, mini_session: Path, capsys) -> None:
    code = main(["new", str(tmp_path / "p"), "--movies", str(mini_session), "--set", "voltage_kV=-3"])
    assert code == 2
    err = capsys.readouterr().err
    assert "voltage_kV" in err and "greater than or equal" in err


def test_missing_movie_refuses_the_run_and_names_it(tmp_path: Path, mini_session: Path, capsys) -> None:
    victim = sorted(mini_session.glob("TS_02_*.mrc"))[1]
    victim.unlink()
    assert main(["new", str(tmp_path / "p"), "--movies", str(mini_session)]) == 0
    capsys.readouterr()
    assert main(["run", str(tmp_path / "p"), "--until", "import_movies"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and victim.name in err[0] and "missing" in err[0]
    status = json.loads((tmp_path / "p" / "project.json").read_text())
    assert status["steps"]["import_movies"]["status"] == "pending"  # refused before anything changed


def test_wrong_movies_folder(tmp_path: Path, capsys) -> None:
    assert main(["new", str(tmp_path / "p"), "--movies", str(tmp_path / "nope")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_inspect_mdoc_mrc_and_errors(tmp_path: Path, mini_session: Path, capsys) -> None:
    mdoc = mini_session / "TS_01.mrc.mdoc"
    assert main(["inspect", str(mdoc), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    text = json.dumps(facts)
    assert "85" in text and "2.5" in text
    # truncated MRC -> one line naming the file
    movie = sorted(mini_session.glob("TS_01_*.mrc"))[0]
    cut = tmp_path / "cut.mrc"
    cut.write_bytes(movie.read_bytes()[:-500])
    assert main(["inspect", str(cut)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cut.mrc" in err[0]
    # an mdoc without TiltAngle -> names the file and the field
    bad = tmp_path / "bad.mdoc"
    bad.write_text(mdoc.read_text().replace("TiltAngle = 3.00", "Tilt = 3.00"))
    assert main(["inspect", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.mdoc" in err[0] and "TiltAngle" in err[0]
    # a missing file
    assert main(["inspect", str(tmp_path / "absent.mrc")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_inspect_every_real_file(shared_data_dir: Path) -> None:
    """`tomoguide inspect` reads every mdoc, MRC, STAR, .xf/.tlt and .aln file in ../shared/data."""
    exts = {".mdoc", ".mrc", ".st", ".map", ".star", ".xf", ".tlt", ".rawtlt", ".xtilt", ".aln"}
    files = sorted(p for p in shared_data_dir.rglob("*") if p.suffix.lower() in exts)
    assert len(files) > 30
    r = run_cli("inspect", "--json", *map(str, files))
    assert r.returncode == 0, r.stderr
    facts = json.loads(r.stdout)
    assert len(facts) == len(files)
    by_name = {Path(f["file"]).name: f for f in facts}
    ts01 = json.dumps(by_name["TS_01.mrc.mdoc"])
    assert "41" in ts01 and "85.3" in ts01 and "5.4" in ts01
    emd = json.dumps(by_name["EMD-3197.map"])
    assert "11.4" in emd and "20" in emd


def test_python_dash_m_version() -> None:
    r = run_cli("--version")
    assert r.returncode == 0 and "tomoguide" in r.stdout


def test_truncated_mrc_helper_is_really_truncated(tmp_path: Path) -> None:
    """Guard for the test above: mrcfile itself sees the cut file as invalid."""
    p = tmp_path / "a.mrc"
    with mrcfile.new(p) as m:
        m.set_data(np.zeros((4, 8, 8), np.float32))
    p.write_bytes(p.read_bytes()[:-100])
    assert not mrcfile.validate(str(p), print_file=io.StringIO())


def test_inspect_coordinates_sqlite_and_text(tmp_path: Path, capsys) -> None:
    from tomoguide.compute.io.coords import ParticleTable, write_scipion_sqlite, write_text_coords

    rng = np.random.default_rng(3)
    table = ParticleTable(tomo_name=np.array(["TS_01"] * 7), xyz_px=rng.uniform(10, 90, (7, 3)), pixel_size_A=12.0,
                          angles_deg=None, score=None)
    write_scipion_sqlite(tmp_path / "coords.sqlite", table, tomo_shapes={"TS_01": (100, 100, 50)}, origin="corner")
    write_text_coords(tmp_path / "coords.txt", table)
    assert main(["inspect", "--json", str(tmp_path / "coords.sqlite"), str(tmp_path / "coords.txt")]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert [f["n_particles"] for f in facts] == [7, 7]
    assert facts[0]["tomograms"] == {"TS_01": 7}
    np.testing.assert_allclose(facts[1]["x_range"], [table.xyz_px[:, 0].min(), table.xyz_px[:, 0].max()], atol=1e-3)


def test_simulate_lists_every_parameter(capsys) -> None:
    from tomoguide import synth

    assert main(["simulate", "--list"]) == 0
    out = capsys.readouterr().out
    for name in synth.SimParams.model_fields:
        assert f"  {name}" in out
    assert "[e⁻/Å²]" in out or "e/" in out


def test_simulate_rejects_unknown_parameter(tmp_path: Path, capsys) -> None:
    assert main(["simulate", "--preset", "tiny", "--out", str(tmp_path), "--set", "no_such=3"]) == 2
    assert "no_such" in capsys.readouterr().err


def test_inspect_on_the_simulated_mdoc_reports_the_truth(tiny_dataset: Path, capsys) -> None:
    """Issue 3: `tomoguide inspect` on the generated mdoc says what the truth says."""
    from tomoguide import synth
    from tomoguide.compute.io.star import read_star

    p = synth.PRESETS["tiny"]
    mdoc = next((tiny_dataset / "data").glob("*/*.mdoc"))
    assert main(["inspect", "--json", str(mdoc)]) == 0
    facts = json.loads(capsys.readouterr().out)
    tilts = read_star(tiny_dataset / "truth" / "TS_01" / "TS_01_tilts.star")["tilts"]
    assert facts["n_tilts"] == len(tilts)
    assert facts["tilt_range_deg"] == [tilts["rlnTomoNominalStageTiltAngle"].min(),
                                       tilts["rlnTomoNominalStageTiltAngle"].max()]
    assert facts["tilt_axis_deg"] == p.tilt_axis_deg and facts["pixel_size_A"] == p.pixel_size_A
    assert facts["dose_per_tilt_e_A2"] == pytest.approx(p.dose_per_tilt_e_A2)
    assert facts["acquisition"]["scheme"] == "dose-symmetric"
    order = tilts.sort_values("tomoguideAcquisitionOrder")["rlnTomoNominalStageTiltAngle"].tolist()
    assert facts["acquisition"]["tilts_in_order"] == order
    assert facts["movies"]["found"] == len(tilts) and facts["movies"]["missing"] == 0


def test_new_reports_what_was_found_before_any_run(tmp_path: Path, mini_session: Path, capsys) -> None:
    victim = sorted(mini_session.glob("TS_02_*.mrc"))[1]
    victim.unlink()
    (mini_session / "gain.mrc").write_bytes(b"")
    assert main(["new", str(tmp_path / "p"), "--movies", str(mini_session)]) == 0
    out = capsys.readouterr().out
    assert "2 mdoc file(s), 2 tilt series" in out
    ts1, ts2 = out.split("\nTS_01: ")[1].split("\nTS_02: ")
    assert "movies: 5 of 5 found (5 beside the mdoc)" in ts1 and "MISSING" not in ts1
    assert "movies: 4 of 5 found" in ts2 and f"MISSING: {victim.name}" in ts2
    for part in (ts1, ts2):
        assert "tilts: 5, -6.0° to +6.0°, dose-symmetric from +0.0°" in part
        assert "gain: gain.mrc (found in the session folder)" in part
        assert "tilt axis: 85° (mdoc title)" in part
        assert "pixel size: 2.5 Å (mdoc PixelSpacing); dose: 3 e⁻/Å² per tilt (mdoc ExposureDose)" in part
    assert f"error: TS_02.mrc.mdoc: 1 movie file(s) missing: {victim.name}" in out
    assert "`tomoguide run` refuses to import until these errors are fixed" in out


def test_new_at_the_tilt_series_and_alignment_entries(tmp_path: Path, capsys) -> None:
    """``new --entry tilt-series`` on a folder with a stack and its .rawtlt imports the stack (the import step runs
    and finds the tilts and pixel size the files give); ``--entry alignment`` also reads the alignment and CTF
    from files, and a missing folder is one line naming the option."""
    data = tmp_path / "stacks"
    data.mkdir()
    tilts = np.array([-6.0, -3.0, 0.0, 3.0, 6.0])
    rng = np.random.default_rng(3)
    with mrcfile.new(data / "TS_07.st") as m:
        m.set_data(rng.normal(size=(5, 48, 64)).astype(np.float32))
        m.voxel_size = 2.5
    (data / "TS_07.rawtlt").write_text("".join(f"{t:.2f}\n" for t in tilts))
    proj = tmp_path / "p"
    assert main(["new", str(proj), "--entry", "tilt-series", "--data", str(data),
                 "--set", "tilt_axis_deg=84"]) == 0
    assert "entry: tilt-series" in capsys.readouterr().out
    assert main(["run", str(proj), "--until", "import_movies"]) == 0
    state = json.loads((proj / "project.json").read_text())["steps"]["import_movies"]
    assert state["params"]["source"] == "tilt series" and state["status"] == "done"
    from tomoguide.project import Project
    from tomoguide.steps.records import SeriesSet

    with Project.open(proj, readonly=True) as p:
        sset, _ = SeriesSet.load(p.output_path("import_movies", "tilt_series"))
    (s,) = sset.series
    assert s.name == "TS_07" and np.allclose(s.geometry.tilt_angles_deg, tilts)
    assert s.geometry.pixel_size_A == pytest.approx(2.5, abs=1e-3)

    capsys.readouterr()
    code = main(["new", str(tmp_path / "q"), "--entry", "alignment", "--data", str(data),
                 "--alignment", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--entry alignment" in err[0] and "alignment files" in err[0]
    assert not (tmp_path / "q" / "project.json").exists()
    ali = tmp_path / "ali"
    ali.mkdir()
    assert main(["new", str(tmp_path / "q"), "--entry", "alignment", "--data", str(data), "--alignment",
                 str(ali)]) == 0
    steps = json.loads((tmp_path / "q" / "project.json").read_text())["steps"]
    assert steps["align"]["params"]["source"] == "files"
    assert steps["ctf_estimate"]["params"]["source"] == "files"
    assert Path(steps["ctf_estimate"]["params"]["ctf_dir"]) == ali.resolve()
