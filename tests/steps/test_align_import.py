"""The align step's ``source = "files"``: an alignment made elsewhere (IMOD .xf/.tlt, AreTomo .aln) read instead of
computed. The tiny demo project's own alignment, exported with ``tomoguide export --to imod``, is imported into a
copy of the project: the geometry is the original's, and the tomogram made from it correlates with the original's.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from tomoguide.cli import main
from tomoguide.geometry import rotation_angle_deg
from tomoguide.project import Project
from tomoguide.runner import RunRefused, StepRun, run_to_end, set_params_checked
from tomoguide.steps import registry
from tomoguide.steps.align import (NOT_IN_FILE, AlignmentFilesError, find_alignment_files, match_views_by_tilt,
                                   read_alignment_files)
from tomoguide.steps.records import SeriesSet

AFTER_ALIGN = registry.ids()[registry.ids().index("align"): registry.ids().index("reconstruct") + 1]


def _axis_diff(a: float, b: float) -> float:
    return (a - b + 180.0) % 360.0 - 180.0


def _copy_project(root: Path, dest: Path) -> Path:
    for part in ("data", "project"):
        shutil.copytree(root / part, dest / part, symlinks=True)
    return dest / "project"


def _aligned(project: Path) -> SeriesSet:
    with Project.open(project, readonly=True) as proj:
        sset, _ = SeriesSet.load(proj.output_path("align", "series"))
    return sset


@pytest.fixture(scope="module")
def imod_export(tiny_project_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, float]]:
    """The tiny project's IMOD export and the binning of each series' .xf (read from the export's README)."""
    out = tmp_path_factory.mktemp("align_import") / "imod"
    assert main(["export", str(tiny_project_root / "project"), "--to", "imod", str(out)]) == 0
    readme = (out / "README.txt").read_text(encoding="utf-8")
    binnings = {m.group(1): float(m.group(2))
                for m in re.finditer(r"^  (\S+)\.st: .*?\(binning ([0-9.]+) of the", readme, re.M)}
    assert binnings, readme
    return out, binnings


@pytest.fixture(scope="module")
def imported(tiny_project_root: Path, imod_export: tuple[Path, dict[str, float]],
             tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny project whose align step reads the exported files, run again up to the tomogram."""
    out, binnings = imod_export
    assert len(set(binnings.values())) == 1
    project = _copy_project(tiny_project_root, tmp_path_factory.mktemp("imported"))
    with Project.open(project) as proj:
        stale = set_params_checked(proj, {"align": {"source": "files", "alignment_dir": str(out),
                                                    "alignment_binning": next(iter(binnings.values()))}})
        assert {"align", "reconstruct"} <= set(stale)  # everything from the alignment on is computed again
        for step in AFTER_ALIGN:
            st = run_to_end(StepRun(proj, step))
            assert st.status == "done", (step, st.error)
    return project


def test_imported_imod_alignment_is_the_original(tiny_project_root: Path, imported: Path) -> None:
    original = {s.name: s for s in _aligned(tiny_project_root / "project").series}
    for s in _aligned(imported).series:
        g, o = s.geometry, original[s.name].geometry
        assert g.binning == o.binning and g.image_shape_px == o.image_shape_px
        d_axis = abs(_axis_diff(g.tilt_axis_deg, o.tilt_axis_deg))
        d_shift = float(np.abs(g.specimen_shifts_px() - o.specimen_shifts_px()).max())
        print(f"{s.name}: tilt axis differs by {d_axis:.2e}°, shifts by up to {d_shift:.2e} px at binning "
              f"{g.binning:g}")
        assert d_axis < 0.01
        ra, rb = rotation_angle_deg(g.xf_array()[:, :, :2]), rotation_angle_deg(o.xf_array()[:, :, :2])
        np.testing.assert_allclose([_axis_diff(a, b) for a, b in zip(ra, rb)], 0.0, atol=0.01)
        np.testing.assert_allclose(g.specimen_shifts_px(), o.specimen_shifts_px(), atol=0.01)
        np.testing.assert_allclose(g.true_tilt_deg(), o.true_tilt_deg(), atol=0.01)
        assert "xf" in s.files and "tracks" not in s.files
    with Project.open(imported, readonly=True) as proj:
        m = proj.data.steps["align"].metrics
        log = proj.data.steps["align"].log
    assert m["source"] == "files" and all(v["source"] == "files" for v in m["series"].values())
    assert any("alignment read from" in line and ".xf" in line for line in log), log


def test_tomogram_from_the_imported_alignment_matches_the_original(tiny_project_root: Path, imported: Path) -> None:
    def tomograms(project: Path) -> dict[str, np.ndarray]:
        with Project.open(project, readonly=True) as proj:
            sset, base = SeriesSet.load(proj.output_path("reconstruct", "tomograms"))
        out = {}
        for s in sset.series:
            with mrcfile.open(s.path("tomogram", base), permissive=True) as f:
                out[s.name] = np.asarray(f.data, np.float64)
        return out

    before, after = tomograms(tiny_project_root / "project"), tomograms(imported)
    assert before.keys() == after.keys()
    for name in before:
        a, b = before[name].ravel(), after[name].ravel()
        cc = float(np.corrcoef(a, b)[0, 1])
        print(f"{name}: tomogram correlation {cc:.7f}")
        assert cc >= 0.99, (name, cc)


def _aln_text(g, drop: set[int] = frozenset(), raw_nx_ny: tuple[int, int] | None = None) -> str:
    """An AreTomo 1.3+ .aln of geometry ``g`` (the reader's documented layout: ROT = the rotation of the xf matrix,
    TX, TY = the specimen shifts), views in ``drop`` left out as dark frames."""
    rot = rotation_angle_deg(g.xf_array()[:, :, :2])
    s = g.specimen_shifts_px()
    tilt = g.true_tilt_deg()
    ny, nx = g.image_shape_px if raw_nx_ny is None else raw_nx_ny[::-1]
    lines = ["# AreTomo Alignment / Priims bprmMn", f"# RawSize = {nx} {ny} {g.n_views}", "# NumPatches = 0"]
    lines += [f"# DarkFrame = {v:5d} {v:5d} {tilt[v]:8.2f}" for v in sorted(drop)]
    lines += [f"# AlphaOffset = {g.tilt_offset_deg:8.2f}", "# BetaOffset =     0.00",
              "# SEC     ROT         GMAG       TX          TY      SMEAN     SFIT    SCALE     BASE     TILT"]
    k = 0
    for v in range(g.n_views):
        if v in drop:
            continue
        lines.append(f"{k:5d} {rot[v]:10.4f} {1.0:10.5f} {s[v, 0]:10.3f} {s[v, 1]:10.3f} 1.00 1.00 1.00 0.00 "
                     f"{tilt[v]:8.2f}")
        k += 1
    return "\n".join(lines) + "\n"


def test_aretomo_aln_reads_back_as_the_geometry(tiny_project_root: Path, tmp_path: Path) -> None:
    s = _aligned(tiny_project_root / "project").series[0]
    g = s.geometry
    # an .aln at binning 1 (RawSize = the full-size images; its binning comes from RawSize) with the first and last
    # views dropped as AreTomo's dark frames
    full = g.at_binning(1.0)
    drop = {0, g.n_views - 1}
    (tmp_path / f"{s.name.lower()}.aln").write_text(_aln_text(full, drop), encoding="ascii")
    files = find_alignment_files(tmp_path, s.name)
    assert set(files) == {"aln"}
    back, facts = read_alignment_files(files, g, None)
    assert facts["format"] == "aretomo" and facts["file_binning"] == pytest.approx(1.0)
    keep = np.array([v not in drop for v in range(g.n_views)])
    # the axis read is the mean of the views in the file (the alignment solves a rotation per view: A = R(-axis_v))
    from tomoguide.geometry import rotation_angle_deg

    axis_v = -rotation_angle_deg(g.xf_array()[:, :, :2])
    assert abs(_axis_diff(back.tilt_axis_deg, float(np.mean(axis_v[keep])))) < 0.01
    assert abs(_axis_diff(back.tilt_axis_deg, g.tilt_axis_deg)) < 0.2
    # the .aln stores shifts to 0.001 px at binning 1
    np.testing.assert_allclose(back.specimen_shifts_px()[keep], g.specimen_shifts_px()[keep], atol=0.01)
    assert back.tilt_offset_deg == pytest.approx(g.tilt_offset_deg, abs=0.01)
    assert back.excluded == [bool(e) or v in drop for v, e in enumerate(g.excluded)]
    assert facts["views_not_in_file"] == [v + 1 for v in sorted(drop)]
    assert NOT_IN_FILE == "not in the imported alignment"


def test_aln_through_the_step_excludes_the_dark_frames(tiny_project_root: Path, tmp_path: Path) -> None:
    project = _copy_project(tiny_project_root, tmp_path)
    series = _aligned(tiny_project_root / "project").series
    folder = tmp_path / "aln"
    folder.mkdir()
    for s in series:
        (folder / f"{s.name}.aln").write_text(_aln_text(s.geometry, {0}), encoding="ascii")
    with Project.open(project) as proj:
        set_params_checked(proj, {"align": {"source": "files", "alignment_dir": str(folder)}})
        st = run_to_end(StepRun(proj, "align"))
        assert st.status == "done", st.error
        m = proj.data.steps["align"].metrics
        log = proj.data.steps["align"].log
    assert m["source"] == "files"
    assert any(".aln" in line and "alignment read from" in line for line in log), log
    assert any(f"views 1 excluded: {NOT_IN_FILE}" in line for line in log), log
    for s in _aligned(project).series:
        assert s.geometry.excluded[0]
        assert s.info["excluded_reasons"] == {"1": NOT_IN_FILE}
        assert m["series"][s.name]["views_not_in_file"] == [1] and m["series"][s.name]["format"] == "aretomo"


def test_missing_files_name_the_series_and_the_folder(tiny_project_root: Path, tmp_path: Path) -> None:
    name = _aligned(tiny_project_root / "project").series[0].name
    with pytest.raises(AlignmentFilesError, match=rf"{re.escape(str(tmp_path))}: {name}: no alignment files"):
        find_alignment_files(tmp_path, name)
    (tmp_path / f"{name}.xf").write_text("1 0 0 1 0 0\n")
    with pytest.raises(AlignmentFilesError, match=rf"{name}\.xf: tilt angles: {name}\.tlt is missing"):
        find_alignment_files(tmp_path, name)
    with pytest.raises(AlignmentFilesError, match="alignment_dir: no such folder"):
        find_alignment_files(tmp_path / "nope", name)


def test_the_check_names_a_folder_without_the_files(tiny_project_root: Path, tmp_path: Path) -> None:
    """A folder is data: the value is kept (not refused), and the run's checks name what is missing."""
    project = _copy_project(tiny_project_root, tmp_path)
    (tmp_path / "empty").mkdir()
    with Project.open(project) as proj:
        set_params_checked(proj, {"align": {"source": "files", "alignment_dir": str(tmp_path / "empty")}})
        issues = StepRun(proj, "align").check_issues()
        with pytest.raises(RunRefused, match="no alignment files"):
            StepRun(proj, "align").preflight()
        set_params_checked(proj, {"align": {"alignment_dir": None}})
        unset = StepRun(proj, "align").check_issues()
    errors = [i for i in issues if i.level == "error"]
    assert errors and all(i.field == "alignment_dir" for i in errors)
    assert f"{tmp_path / 'empty'}: " in errors[0].message and "no alignment files" in errors[0].message
    assert any(i.level == "error" and i.field == "alignment_dir" and "choose the folder" in i.message for i in unset)


def test_wrong_view_counts_and_unreadable_values(tiny_project_root: Path, imod_export: tuple[Path, dict],
                                                 tmp_path: Path) -> None:
    out, binnings = imod_export
    s = _aligned(tiny_project_root / "project").series[0]
    name = s.name
    xf = (out / f"{name}.xf").read_text().splitlines(keepends=True)
    tlt = (out / f"{name}.tlt").read_text().splitlines(keepends=True)
    # one transform fewer than tilt angles
    (tmp_path / f"{name}.xf").write_text("".join(xf[:-1]))
    (tmp_path / f"{name}.tlt").write_text("".join(tlt))
    with pytest.raises(AlignmentFilesError, match=rf"{name}\.xf: transforms: {len(xf) - 1} views, but {name}\.tlt "
                                                   rf"holds {len(tlt)} tilt angles"):
        read_alignment_files(find_alignment_files(tmp_path, name), s.geometry, binnings[name])
    # more views than the series has
    (tmp_path / f"{name}.xf").write_text("".join(xf + xf[:1]))
    (tmp_path / f"{name}.tlt").write_text("".join(tlt) + "  70.0\n")
    with pytest.raises(AlignmentFilesError, match=rf"{name}\.xf: tilt angles: {len(xf) + 1} views, but the tilt "
                                                   rf"series has only {len(xf)}"):
        read_alignment_files(find_alignment_files(tmp_path, name), s.geometry, binnings[name])
    # tilts of another series
    (tmp_path / f"{name}.xf").write_text("".join(xf))
    (tmp_path / f"{name}.tlt").write_text("".join(f"{float(t) * 1.5:9.4f}\n" for t in tlt))
    with pytest.raises(AlignmentFilesError, match=r"tilt angles: the file's .* do not match"):
        read_alignment_files(find_alignment_files(tmp_path, name), s.geometry, binnings[name])
    # a value that is not a number names the file and the line
    (tmp_path / f"{name}.tlt").write_text("".join(tlt[:-1]) + "  abc\n")
    with pytest.raises(AlignmentFilesError, match=rf"{name}\.tlt: line {len(tlt)}: expected 1 number"):
        read_alignment_files(find_alignment_files(tmp_path, name), s.geometry, binnings[name])


def test_matching_prefers_the_offset_closest_to_the_prior() -> None:
    nominal = np.arange(-30.0, 31.0, 10.0)
    # the end view dropped: the file also fits one tilt step off; the prior (0) decides
    idx, off = match_views_by_tilt(nominal[1:] + 0.2, nominal, 0.0, "f")
    assert list(idx) == list(range(1, 7)) and off == pytest.approx(0.2)
    with pytest.raises(AlignmentFilesError, match="f: tilt angles"):
        match_views_by_tilt(nominal + 0.6 * np.arange(7), nominal, 0.0, "f")
