"""Entry points: the other programs' files each reader path takes, round trips through tomoguide's exports, a real
Warp XML, and the one-line refusals (file and field named)."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from tomoguide.compute.io.errors import FormatError
from tomoguide.steps.ctf_files import ctf_values_for_views, find_ctf_file, read_ctf_file
from tomoguide.steps.import_tilt_series import plan_stack

# ---- CTF files: conventions and refusals ------------------------------------------------------------------------


def _relion_star(path: Path, u, v, a, tilts) -> Path:  # noqa: ANN001
    from tomoguide.compute.io.star import write_tilt_series_star

    df = pd.DataFrame({"rlnMicrographName": [f"{i + 1}@TS.mrcs" for i in range(len(u))],
                       "rlnTomoNominalStageTiltAngle": tilts, "rlnDefocusU": u, "rlnDefocusV": v,
                       "rlnDefocusAngle": a})
    write_tilt_series_star(path, df, tomo_name=path.stem)
    return path


def test_ctf_files_conventions(tmp_path: Path) -> None:
    tilts = np.array([-6.0, -3.0, 0.0, 3.0, 6.0])
    # RELION 5 STAR with one row given as U < V: swapped, angle + 90°, wrapped into [-90, 90)
    star = _relion_star(tmp_path / "TS_01.star", [30000, 31000, 29000, 30500, 30200],
                        [29500, 31500, 28800, 30000, 30100], [10, 80, -30, 45, 0], tilts)
    t = read_ctf_file(star)
    assert t.kind == "RELION 5 STAR"
    np.testing.assert_allclose(t.u_A, [30000, 31500, 29000, 30500, 30200])
    np.testing.assert_allclose(t.v_A, [29500, 31000, 28800, 30000, 30100])
    np.testing.assert_allclose(t.angle_deg, [10, -10, -30, 45, 0])  # 80 + 90 = 170 -> -10
    # rows matched by tilt: the series' views are in ascending order, the file's in any order
    (tmp_path / "sh").mkdir()
    shuffled = _relion_star(tmp_path / "sh" / "TS_01.star", [1e4, 2e4, 3e4, 4e4, 5e4], [1e4, 2e4, 3e4, 4e4, 5e4],
                            [0] * 5, [3.0, -6.0, 0.0, 6.0, -3.0])
    vals = ctf_values_for_views(read_ctf_file(shuffled), tilts, None)
    np.testing.assert_allclose(vals[:, 0], [2e4, 5e4, 3e4, 1e4, 4e4])
    # ctfplotter version 3 with astigmatism: nm -> Å, views 1-based -> 0-based, same angle
    (tmp_path / "TS_02.defocus").write_text("1 0 0. 0. 0 3\n" + "".join(
        f"{i + 1} {i + 1} {tt:.2f} {tt:.2f} {3000 + i:.1f} {2950 + i:.1f} 12.5\n" for i, tt in enumerate(tilts)))
    d = read_ctf_file(find_ctf_file(tmp_path, "ts_02"))
    np.testing.assert_allclose(d.u_A, 10 * (3000 + np.arange(5)))
    np.testing.assert_allclose(d.angle_deg, 12.5)
    np.testing.assert_allclose(ctf_values_for_views(d, tilts, [0, 1, 2, 3, 4])[:, 1], 10 * (2950 + np.arange(5)))
    # a RELION (or Warp) file numbers the images of its own stack: with an imported stack that lacks the -6° view
    # its rows are still matched by tilt, not shifted by one image
    vals = ctf_values_for_views(read_ctf_file(shuffled), tilts[1:], [0, 1, 2, 3])
    np.testing.assert_allclose(vals[:, 0], [5e4, 3e4, 1e4, 4e4])
    # a ctfplotter file made on another stack (here one that still had the 0° view: its images' tilts disagree
    # with the imported stack's beyond one common offset) is refused
    with pytest.raises(FormatError, match="made on another stack"):
        ctf_values_for_views(d, np.array([-6.0, -3.0, 3.0, 6.0]), [0, 1, 2, 3])


@pytest.mark.parametrize("u, message", [(-30000.0, "not a positive number"), (2.5, "too small for Å"),
                                        (5e6, "beyond 30 µm")])
def test_ctf_files_refuse_other_signs_and_units(tmp_path: Path, u: float, message: str) -> None:
    star = _relion_star(tmp_path / "TS_01.star", [30000, u], [30000, 30000], [0, 0], [0.0, 3.0])
    with pytest.raises(FormatError) as err:
        read_ctf_file(star)
    text = str(err.value)
    assert "TS_01.star" in text and "rlnDefocusU" in text and message in text
    assert "\n" not in text


def test_ctf_files_missing_column_and_views(tmp_path: Path) -> None:
    from tomoguide.compute.io.star import write_tilt_series_star

    write_tilt_series_star(tmp_path / "TS_01.star", pd.DataFrame({"rlnMicrographName": ["1@a.mrcs"],
                                                                 "rlnTomoNominalStageTiltAngle": [0.0]}),
                           tomo_name="TS_01")
    with pytest.raises(FormatError, match=r"TS_01.star: data_TS_01/rlnDefocusU: missing column"):
        read_ctf_file(tmp_path / "TS_01.star")
    star = _relion_star(tmp_path / "TS_02.star", [3e4, 3e4], [3e4, 3e4], [0, 0], [0.0, 3.0])
    with pytest.raises(FormatError, match=r"TS_02.star: views: no defocus for the series' view at -3.0°"):
        ctf_values_for_views(read_ctf_file(star), [-3.0, 0.0, 3.0], None)
    with pytest.raises(FormatError, match=r"no CTF file for this tilt series"):
        find_ctf_file(tmp_path, "TS_09")


def test_real_warp_xml_alignment_and_ctf(real_data_file) -> None:  # type: ignore[no-untyped-def]
    """A real WarpTools XML (EMPIAR-10499): its alignment reads (41 tilts, axis −4.3°, offsets in Å) and its CTF,
    never fitted per tilt there, is refused by name."""
    from tomoguide.geometry import TiltSeriesGeometry
    from tomoguide.steps.align import read_alignment_files

    path = real_data_file("warp/pypi__cryoet-alignment-0.2.0/00254.xml")
    from tomoguide.compute.io.warp import read_warp_tilt_series_xml

    w = read_warp_tilt_series_xml(path)
    g = TiltSeriesGeometry(name="00254", pixel_size_A=1.0, binning=4.0, image_shape_px=(1000, 1000),
                           tilt_angles_deg=np.sort(w.tilt_deg))
    new, facts = read_alignment_files({"xml": path}, g, None)
    assert facts["format"] == "warp" and facts["n_views_in_file"] == 41
    assert new.tilt_axis_deg == pytest.approx(float(np.mean(w.axis_angle_deg)), abs=1e-3)
    order = np.argsort(w.tilt_deg)
    # the specimen shift (px at bin 4) is Warp's AxisOffset in Å over the pixel size
    np.testing.assert_allclose(new.specimen_shifts_px(), w.axis_offset_A[order] / 4.0, atol=1e-4)
    with pytest.raises(FormatError, match="GridCTF: no per-tilt defocus"):
        read_ctf_file(path)


# ---- the tilt-series import: what each file gives, and refusals ---------------------------------------------------


def _params(**kw):  # noqa: ANN003, ANN202
    base = dict(pixel_size_A=None, tilt_axis_deg=None, dose_per_tilt_e_A2=None, initial_dose_e_A2=0.0,
                dose_list_kind="dose")
    return SimpleNamespace(**{**base, **kw})


def _stack(path: Path, n: int = 5, voxel: float = 0.0) -> Path:
    import mrcfile

    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(np.zeros((n, 16, 16), np.float32))
        m.voxel_size = voxel
    return path


def _files(folder: Path) -> dict[str, Path]:
    return {p.name.lower(): p for p in folder.iterdir()}


def test_import_plan_from_mdoc_and_multicolumn_rawtlt(tmp_path: Path, session_writer) -> None:  # type: ignore[no-untyped-def]
    # a stack with its SerialEM mdoc: pixel size (header 0), axis, dose, order (DateTime) from the mdoc
    session_writer(tmp_path / "s", n_series=1, tilts=(0.0, 3.0, -3.0, -6.0, 6.0), pixel_A=2.5, tilt_axis_deg=85.0,
                   dose=3.0)
    folder = tmp_path / "ts"
    folder.mkdir()
    shutil.copyfile(tmp_path / "s" / "TS_01.mrc.mdoc", folder / "TS_01.mrc.mdoc")
    _stack(folder / "TS_01.mrc")
    p = plan_stack(folder / "TS_01.mrc", _files(folder), _params())
    assert p is not None and p.pixel_A == 2.5 and p.pixel_source == "mdoc PixelSpacing"
    assert p.axis_deg == 85.0 and p.axis_source == "mdoc title"
    np.testing.assert_allclose(p.tilts_deg, [0, 3, -3, -6, 6])
    assert p.order_source == "mdoc DateTime" and list(p.order) == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(p.dose, 3.0)
    np.testing.assert_allclose(p.prior_dose, [0, 3, 6, 9, 12])
    # an IMOD stack sorted by angle with a two-column rawtlt (AreTomo's acquisition order) and a one-column dose
    f2 = tmp_path / "imod"
    f2.mkdir()
    _stack(f2 / "TS_02.st", voxel=1.8)
    (f2 / "TS_02.rawtlt").write_text("-6 4\n-3 3\n0 1\n3 2\n6 5\n")
    (f2 / "TS_02.dose").write_text("2\n2\n2\n2\n2\n")
    p = plan_stack(f2 / "TS_02.st", _files(f2), _params())
    assert p.pixel_A == pytest.approx(1.8) and p.pixel_source == "MRC header"
    assert list(p.order) == [3, 2, 0, 1, 4] and "order column" in p.order_source
    np.testing.assert_allclose(p.prior_dose, [6, 4, 0, 2, 8])
    assert any(i.level == "info" and "tilt axis" in i.message for i in p.issues)
    # a header that says exactly 1 Å/px (what writers put when they know nothing) is used, with a warning
    _stack(f2 / "TS_02.st", voxel=1.0)
    p = plan_stack(f2 / "TS_02.st", _files(f2), _params())
    assert p.pixel_A == 1.0 and any(i.level == "warning" and "exactly 1 Å/px" in i.message for i in p.issues)


def test_import_refusals(tmp_path: Path) -> None:
    from tomoguide.steps.import_tilt_series import survey_stacks

    _stack(tmp_path / "TS_01.st")  # header pixel size 0, no mdoc
    (tmp_path / "TS_01.rawtlt").write_text("-6\n-3\n0\n3\n6\n")
    _stack(tmp_path / "TS_01_rec.mrc")  # no angles: left out with a warning
    plans, issues = survey_stacks(SimpleNamespace(files_dir=str(tmp_path), **vars(_params())))
    errors = [i.message for i in issues if i.level == "error"]
    assert len(errors) == 1 and "TS_01.st: pixel size: neither the MRC header" in errors[0]
    assert any(i.level == "warning" and "TS_01_rec.mrc" in i.message for i in issues)
    (tmp_path / "TS_01.rawtlt").write_text("-6\n-3\n0\n3\n")
    _, issues = survey_stacks(SimpleNamespace(files_dir=str(tmp_path), **vars(_params(pixel_size_A=2.0))))
    assert any("TS_01.rawtlt: tilt angles: 4 angles for the 5 images of TS_01.st" in i.message for i in issues)
    # IMOD's one folder per series: found there, with its own angle file; the same name twice is refused
    sub = tmp_path / "TS_02"
    sub.mkdir()
    _stack(sub / "TS_02.st", voxel=2.0)
    (sub / "TS_02.rawtlt").write_text("-6\n-3\n0\n3\n6\n")
    plans, issues = survey_stacks(SimpleNamespace(files_dir=str(tmp_path), **vars(_params(pixel_size_A=2.0))))
    assert [p.name for p in plans] == ["TS_02"]
    twin = tmp_path / "again"
    twin.mkdir()
    _stack(twin / "ts_02.st", voxel=2.0)
    (twin / "ts_02.rawtlt").write_text("-6\n-3\n0\n3\n6\n")
    _, issues = survey_stacks(SimpleNamespace(files_dir=str(tmp_path), **vars(_params(pixel_size_A=2.0))))
    assert any(i.level == "error" and "ts_02.st: name: a second tilt series" in i.message for i in issues)
    empty = tmp_path / "empty"
    empty.mkdir()
    _, issues = survey_stacks(SimpleNamespace(files_dir=str(empty), **vars(_params())))
    assert "no tilt-series stack" in issues[0].message


# ---- round trips through tomoguide's own exports ----------------------------------------------------------------


@pytest.fixture(scope="module")
def full_project(tiny_project_root: Path) -> Path:
    return tiny_project_root / "project"


@pytest.mark.parametrize("fmt", ["relion5", "warp"])
def test_alignment_and_ctf_round_trip(full_project: Path, tmp_path: Path, fmt: str) -> None:
    """The full project's alignment and CTF written as RELION 5 per-tilt STARs or Warp XMLs (our exports), read
    back at entry (b): the same tomogram (correlation ≥ 0.99)."""
    from test_entries_ab import correlation, run_entry, tomograms

    from tomoguide.export import export_project
    from tomoguide.project import Project
    from tomoguide.steps.records import SeriesSet

    export_project(full_project, "imod", tmp_path / "imod")
    stacks = tmp_path / "stacks"
    stacks.mkdir()
    with Project.open(full_project, readonly=True) as proj:
        sset, _ = SeriesSet.load(proj.output_path("ctf_estimate", "series"))
        axis = float(next(iter(proj.state("import_movies").metrics["series"].values()))["tilt_axis_deg"])
        imp = proj.params("import_movies")
    for s in sset.series:
        for ext in (".st", ".rawtlt"):
            shutil.copyfile(tmp_path / "imod" / f"{s.name}{ext}", stacks / f"{s.name}{ext}")
    export_project(full_project, fmt, tmp_path / fmt)
    files = tmp_path / fmt / ("tilt_series" if fmt == "relion5" else "")
    new = run_entry(full_project, tmp_path / "entry", {
        "import_movies": {"source": "tilt series", "files_dir": str(stacks), "tilt_axis_deg": axis,
                          "voltage_kV": imp.voltage_kV, "cs_mm": imp.cs_mm,
                          "amplitude_contrast": imp.amplitude_contrast},
        "align": {"source": "files", "alignment_dir": str(files)},
        "ctf_estimate": {"source": "files", "ctf_dir": str(files)}})
    full, ours = tomograms(full_project), tomograms(new)
    cc = {n: correlation(full[n], ours[n]) for n in full}
    assert cc and min(cc.values()) >= 0.99, cc
    with Project.open(new, readonly=True) as proj:
        assert proj.state("align").metrics["series"][sset.series[0].name]["format"] == fmt
