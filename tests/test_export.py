"""``tomoguide export``: RELION 5 and IMOD files read back give the project's geometry, particles and maps.

The project is the session's tiny demo run (``tiny_project_root``); the export is written outside it (the export
opens the project read-only, so it is not copied). Tests of bad states use a project with no step done.
"""

from __future__ import annotations

import io
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile

from tomoguide.cli import main
from tomoguide.compute.io.imod import read_mod_points, read_tlt, read_xf, read_xtilt
from tomoguide.compute.io.mrc import read_header
from tomoguide.compute.io.star import read_particles_star, read_star, read_tilt_series_star, read_tomograms_star
from tomoguide.export import MARKER, manifest_of
from tomoguide.geometry import TiltSeriesGeometry, rotation_angle_deg
from tomoguide.project import Project
from tomoguide.results import export_commands
from tomoguide.steps.average_records import AverageRecord, ParticleStack
from tomoguide.steps.records import SeriesSet


def _done(project: Path, *step_ids: str) -> Project:
    proj = Project.open(project, readonly=True)
    missing = [s for s in step_ids if proj.data.steps[s].status != "done"]
    if missing:
        proj.close()
        pytest.fail(f"the tiny run did not finish {', '.join(missing)}")
    return proj


def _valid_mrc(path: Path) -> None:
    report = io.StringIO()
    assert mrcfile.validate(str(path), print_file=report), f"{path}: {report.getvalue()}"


def _same_geometry(a: TiltSeriesGeometry, b: TiltSeriesGeometry, views: np.ndarray, *, shift_tol_A: float) -> None:
    """True tilts, per-view in-plane rotations (1e-4°) and specimen shifts (Å) of ``a`` equal ``b``'s ``views``."""
    np.testing.assert_allclose(a.true_tilt_deg(), b.true_tilt_deg()[views], atol=1e-4)
    ra = rotation_angle_deg(a.xf_array()[:, :, :2])
    rb = rotation_angle_deg(b.xf_array()[views, :, :2])
    np.testing.assert_allclose((ra - rb + 180.0) % 360.0 - 180.0, 0.0, atol=1e-4)
    sa = a.specimen_shifts_px() * a.pixel_size_binned_A
    sb = b.specimen_shifts_px()[views] * b.pixel_size_binned_A
    np.testing.assert_allclose(sa, sb, atol=shift_tol_A)
    assert a.x_tilt_deg == pytest.approx(b.x_tilt_deg, abs=1e-4)


@pytest.fixture(scope="module")
def relion_export(tiny_project_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "relion5"
    _done(tiny_project_root / "project", "exclude").close()
    assert main(["export", str(tiny_project_root / "project"), "--to", "relion5", str(out)]) == 0
    return out


def test_the_summary_shows_runnable_export_commands(tiny_project_root: Path) -> None:
    project = tiny_project_root / "project"
    commands = export_commands(project)
    assert [c.split()[4] for c in commands] == ["relion5", "imod", "warp"]
    assert all(c.endswith(f"export/{c.split()[4]}") for c in commands)


def test_relion5_star_files_parse_and_paths_resolve(relion_export: Path) -> None:
    stars = sorted(relion_export.rglob("*.star"))
    assert {p.relative_to(relion_export).as_posix() for p in stars} >= {
        "tomograms.star", "particles.star", "optimisation_set.star"}
    for p in stars:
        assert starfile.read(p, always_dict=True), p
    opt = read_star(relion_export / "optimisation_set.star")[""]
    assert opt["rlnTomoParticlesFile"] == "particles.star" and opt["rlnTomoTomogramsFile"] == "tomograms.star"
    files = manifest_of(relion_export).files
    assert "README.txt" in files and all((relion_export / f).is_file() for f in files)
    readme = (relion_export / "README.txt").read_text()
    assert "rlnTomoHand = -1" in readme and "rlnTomoZRot" in readme


def test_relion5_geometry_reads_back_as_the_projects(tiny_project_root: Path, relion_export: Path) -> None:
    with _done(tiny_project_root / "project", "exclude") as proj:
        sset, base = SeriesSet.load(proj.output_path("exclude", "series"))
    tomos = read_tomograms_star(relion_export / "tomograms.star")
    assert sorted(tomos.names) == sorted(sset.names())
    for s in sset.series:
        g = s.geometry
        row = tomos.tomograms[tomos.tomograms["rlnTomoName"] == s.name].iloc[0]
        assert int(row["rlnTomoHand"]) == g.defocus_handedness
        px = float(row["rlnTomoTiltSeriesPixelSize"])
        assert px == pytest.approx(g.pixel_size_binned_A)
        tilts = read_tilt_series_star(relion_export / row["rlnTomoTiltSeriesStarFile"])
        views = g.included_views()
        assert len(tilts) == views.size
        # images: k@stack, the project's own stack (same size), k counting from 1
        stacks = {name.split("@", 1)[1] for name in tilts["rlnMicrographName"]}
        assert len(stacks) == 1
        stack = relion_export / stacks.pop()
        head = read_header(stack)
        assert head.shape == read_header(s.path("stack", base)).shape
        _valid_mrc(stack)
        assert [int(n.split("@")[0]) - 1 for n in tilts["rlnMicrographName"]] == views.tolist()
        offset = float(np.median(tilts["rlnTomoYTilt"] - tilts["rlnTomoNominalStageTiltAngle"]))
        back = TiltSeriesGeometry.from_relion5(tilts, name=s.name, pixel_size_A=g.pixel_size_A,
                                               binning=px / g.pixel_size_A, image_shape_px=(head.ny, head.nx),
                                               tilt_offset_deg=offset)
        _same_geometry(back, g, views, shift_tol_A=1e-3)
        np.testing.assert_allclose(tilts["rlnTomoNominalStageTiltAngle"], np.asarray(g.tilt_angles_deg)[views],
                                   atol=1e-4)
        if g.prior_dose_e_A2 is not None:
            np.testing.assert_allclose(tilts["rlnMicrographPreExposure"], np.asarray(g.prior_dose_e_A2)[views],
                                       atol=1e-4)
        ctf = read_star(s.path("ctf_star", base))
        ctf = next(v for v in ctf.values() if hasattr(v, "columns"))
        np.testing.assert_allclose(tilts["rlnDefocusU"], ctf["rlnDefocusU"].to_numpy(float)[views], atol=1e-3)
        np.testing.assert_allclose(tilts["rlnDefocusV"], ctf["rlnDefocusV"].to_numpy(float)[views], atol=1e-3)
        np.testing.assert_allclose(tilts["rlnCtfAstigmatism"], tilts["rlnDefocusU"] - tilts["rlnDefocusV"],
                                   atol=1e-3)
        if "rlnTomoReconstructedTomogram" in row.index:
            tomo = relion_export / row["rlnTomoReconstructedTomogram"]
            _valid_mrc(tomo)
            nz, ny, nx = read_header(tomo).shape
            b = float(row["rlnTomoTomogramBinning"])
            assert (row["rlnTomoSizeX"], row["rlnTomoSizeZ"]) == (round(nx * b), round(nz * b))


def test_relion5_particles_and_maps_match_the_project(tiny_project_root: Path, relion_export: Path) -> None:
    sources = manifest_of(relion_export).sources
    assert "particles" in sources, sources
    step = sources["particles"]
    with _done(tiny_project_root / "project", step) as proj:
        if step == "extract":
            rec, folder = ParticleStack.load(proj.output_path(step, "particles"))
            original = read_particles_star(rec.path("star", folder)).particles
        else:
            rec, folder = AverageRecord.load(proj.output_path(step, "average"))
            original = read_particles_star(rec.path("particles", folder)).particles
    ps = read_particles_star(relion_export / "particles.star")
    assert int(ps.general["rlnTomoSubTomosAre2DStacks"]) == 0
    optics = ps.optics.iloc[0]
    for label in ("rlnOpticsGroupName", "rlnSphericalAberration", "rlnVoltage", "rlnAmplitudeContrast",
                  "rlnTomoTiltSeriesPixelSize", "rlnImagePixelSize", "rlnImageSize", "rlnTomoSubtomogramBinning"):
        assert label in optics.index, label
    assert int(optics["rlnImageDimensionality"]) == 3 and int(optics["rlnCtfDataAreCtfPremultiplied"]) == 1
    df = ps.particles
    assert len(df) == len(original)
    for cols in (["rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst", "rlnCenteredCoordinateZAngst"],
                 ["rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst"]):
        np.testing.assert_allclose(df[cols].to_numpy(float), original[cols].to_numpy(float), atol=1e-3)
    if "rlnAngleRot" in original.columns:
        cols = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]
        np.testing.assert_allclose(df[cols].to_numpy(float), original[cols].to_numpy(float), atol=1e-4)
    assert (df["rlnRandomSubset"].to_numpy() == original["rlnRandomSubset"].to_numpy()).all()
    box = int(optics["rlnImageSize"])
    for name in list(df["rlnImageName"]) + list(df["rlnCtfImage"]):
        assert not Path(name).is_absolute()
        p = relion_export / name
        assert p.is_file(), name
    for name in (df["rlnImageName"].iloc[0], df["rlnCtfImage"].iloc[0]):
        _valid_mrc(relion_export / name)
        assert read_header(relion_export / name).shape == (box, box, box)
    if "maps" in sources:
        maps = sorted((relion_export / "maps").glob("*.mrc"))
        assert {p.name for p in maps} >= {"map.mrc", "half1.mrc", "half2.mrc"}
        for p in maps:
            _valid_mrc(p)
            with mrcfile.open(p, permissive=False) as m:
                assert float(m.voxel_size.x) == pytest.approx(float(optics["rlnImagePixelSize"]), rel=1e-5) or \
                    sources["maps"] != step
                assert (float(m.header.origin.x), float(m.header.origin.y), float(m.header.origin.z)) == (0, 0, 0)
                assert (int(m.header.nxstart), int(m.header.nystart), int(m.header.nzstart)) == (0, 0, 0)


def test_imod_files_read_back_as_the_projects_geometry_and_picks(tiny_project_root: Path, tmp_path: Path) -> None:
    project = tiny_project_root / "project"
    out = tmp_path / "imod"
    assert main(["export", str(project), "--to", "imod", str(out)]) == 0
    with _done(project, "exclude") as proj:
        sset, base = SeriesSet.load(proj.output_path("exclude", "series"))
        picks = read_particles_star(proj.output_path("pick", "particles")).particles \
            if proj.data.steps["pick"].status == "done" else None
        tomos = SeriesSet.load(proj.output_path("reconstruct", "tomograms")) \
            if proj.data.steps["reconstruct"].status == "done" else None
    for s in sset.series:
        g = s.geometry
        assert read_header(out / f"{s.name}.st").shape == read_header(s.path("stack", base)).shape
        back = TiltSeriesGeometry.from_imod(read_xf(out / f"{s.name}.xf"), read_tlt(out / f"{s.name}.tlt"),
                                            name=s.name, pixel_size_A=g.pixel_size_A, binning=g.binning,
                                            image_shape_px=g.image_shape_px, tilt_offset_deg=g.tilt_offset_deg)
        views = np.arange(g.n_views)
        # .xf shifts are written to 0.001 px (IMOD's format): compare to that, in Å
        _same_geometry(back, g, views, shift_tol_A=1e-3 * g.pixel_size_binned_A)
        np.testing.assert_allclose(back.xf_array()[:, :, :2], g.xf_array()[:, :, :2], atol=1e-6)
        np.testing.assert_allclose(read_tlt(out / f"{s.name}.rawtlt"), g.tilt_angles_deg, atol=1e-4)
        np.testing.assert_allclose(read_xtilt(out / f"{s.name}.xtilt"), 0.0)
        # the binned stacks (alignment and reconstruction inputs) each with the alignment in their own pixels
        binned = sorted(out.glob(f"{s.name}_bin*.st"))
        assert len(binned) == 2, binned
        for st in binned:
            b = float(st.stem.rsplit("_bin", 1)[1])
            assert read_header(st).shape[0] == g.n_views
            xf_b = read_xf(st.with_suffix(".xf"))
            np.testing.assert_allclose(xf_b[:, 4:], g.to_imod()[0][:, 4:] * g.binning / b, atol=2e-3)
            np.testing.assert_allclose(read_tlt(st.with_suffix(".tlt")), g.true_tilt_deg(), atol=1e-4)
        if picks is None or tomos is None:
            continue
        entry = next(t for t in tomos[0].series if t.name == s.name)
        nz, ny, nx = entry.info["shape_zyx"]
        vox = entry.geometry.pixel_size_binned_A
        model = read_mod_points(out / f"{s.name}.mod")
        assert model.image_shape_xyz == (nx, ny, nz) and model.pixel_size == pytest.approx(vox)
        # teamtomo's imodmodel (an independent reader) parses the model to the same points
        imodmodel = pytest.importorskip("imodmodel")
        df = imodmodel.read(out / f"{s.name}.mod")
        np.testing.assert_allclose(np.sort(df[["x", "y", "z"]].to_numpy(float), axis=0),
                                   np.sort(model.xyz, axis=0), atol=1e-4)
        mine = picks[picks["rlnTomoName"] == s.name]
        centred = mine[["rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst",
                        "rlnCenteredCoordinateZAngst"]].to_numpy(float)
        voxel_xyz = centred / vox + (np.array([nx, ny, nz]) - 1) / 2.0  # tomoguide: voxel i's centre at i
        np.testing.assert_allclose(model.xyz, voxel_xyz + [0.5, 0.5, 0.0], atol=1e-3)  # IMOD: x, y from the edge
        # the pick step's import of the exported model gives the picks back (not half a voxel off)
        from tomoguide.steps.pick import _import

        table = _import(out / f"{s.name}.mod", {s.name: (nx, ny, nz)}, None, vox, s.name)
        np.testing.assert_allclose(table.xyz_px, voxel_xyz, atol=1e-3)
        assert read_header(out / f"{s.name}_rec.mrc").shape == (nz, ny, nx)


def test_nothing_to_export_is_one_line_naming_the_step(tmp_path: Path, mini_session: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    project = tmp_path / "p"
    assert main(["new", str(project), "--movies", str(mini_session)]) == 0
    capsys.readouterr()
    for fmt, step in (("relion5", "exclude"), ("imod", "assign_alignment")):
        out = tmp_path / f"out-{fmt}"
        assert main(["export", str(project), "--to", fmt, str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert "nothing to export" in err and f"({step})" in err and "pending" in err, err
        assert not out.exists()
    assert main(["export", str(tmp_path / "nope"), "--to", "relion5", str(tmp_path / "o")]) == 2
    assert "error" in capsys.readouterr().err


def test_a_folder_not_made_by_export_is_refused_unless_forced(tiny_project_root: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    project = tiny_project_root / "project"
    _done(project, "assign_alignment").close()
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert main(["export", str(project), "--to", "imod", str(out)]) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and "--force" in err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert main(["export", str(project), "--to", "imod", str(out), "--force"]) == 0
    assert (out / "notes.txt").read_text() == "keep me" and (out / MARKER).is_file()
    # an earlier export's folder is replaced: its files removed first (a stale one listed in it goes too)
    again = tmp_path / "again"
    assert main(["export", str(project), "--to", "imod", str(again)]) == 0
    manifest = manifest_of(again)
    (again / "stale.xf").write_text("old")
    raw = manifest.model_copy(update={"files": [*manifest.files, "stale.xf"]})
    (again / MARKER).write_text(raw.model_dump_json())
    assert main(["export", str(project), "--to", "imod", str(again)]) == 0
    assert not (again / "stale.xf").exists() and (again / "README.txt").is_file()


def test_export_never_deletes_or_writes_through_a_linked_folder(tiny_project_root: Path, tmp_path: Path) -> None:
    """A previous export's folder whose sub-folder was replaced by a link to elsewhere: the file the manifest
    names there is not deleted, and the export refuses to write through the link."""
    project = tiny_project_root / "project"
    out = tmp_path / "imod"
    assert main(["export", str(project), "--to", "imod", str(out)]) == 0
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep")
    (out / "sub").symlink_to(victim, target_is_directory=True)
    manifest = manifest_of(out)
    (out / MARKER).write_text(manifest.model_copy(update={"files": [*manifest.files, "sub/precious.txt"]})
                              .model_dump_json())
    assert main(["export", str(project), "--to", "imod", str(out)]) == 0
    assert (victim / "precious.txt").read_text() == "keep"
    from tomoguide.export import ExportError, _Writer

    with pytest.raises(ExportError, match="symbolic link"):
        _Writer(out).path("sub/new.txt")
    assert not (victim / "new.txt").exists()



def test_warp_xml_reads_back_as_the_projects_geometry_and_ctf(tiny_project_root: Path, tmp_path: Path) -> None:
    """``--to warp``: every series' XML (UTF-8 with BOM, as Warp writes) read by our Warp reader gives the record's
    true tilts, per-view in-plane rotation (AxisAngle = −rotation of the .xf matrix), specimen shifts in Å, dose
    before each tilt, UseTilt = not excluded, and the per-tilt CTF (U, V, angle); the alignment read back through
    the align step's Warp reader equals the record's .xf."""
    from tomoguide.compute.io.star import read_ctf_star
    from tomoguide.compute.io.warp import read_warp_tilt_series_xml
    from tomoguide.steps.align import _warp_alignment

    project = tiny_project_root / "project"
    out = tmp_path / "warp"
    assert main(["export", str(project), "--to", "warp", str(out)]) == 0
    with _done(project, "exclude") as proj:
        sset, base = SeriesSet.load(proj.output_path("exclude", "series"))
    for s in sset.series:
        g = s.geometry
        w = read_warp_tilt_series_xml(out / f"{s.name}.xml")
        assert w.encoding == "UTF-8 (BOM)" and not w.angles_inverted and w.n_tilts == g.n_views
        np.testing.assert_allclose(w.tilt_corrected_deg, g.true_tilt_deg(), atol=1e-4)
        np.testing.assert_allclose(-w.axis_angle_deg, rotation_angle_deg(g.xf_array()[:, :, :2]), atol=1e-4)
        np.testing.assert_allclose(w.axis_offset_A, g.specimen_shifts_px() * g.pixel_size_binned_A, atol=1e-3)
        np.testing.assert_allclose(w.dose_prior_e_per_A2, g.prior_dose_e_A2, atol=1e-4)
        np.testing.assert_array_equal(w.use_tilt, ~np.asarray(g.excluded, bool))
        ctf = read_ctf_star(s.path("ctf_star", base))
        np.testing.assert_allclose(w.defocus_u_A, ctf["rlnDefocusU"].to_numpy(float), atol=0.1)
        np.testing.assert_allclose(w.defocus_v_A, ctf["rlnDefocusV"].to_numpy(float), atol=0.1)
        np.testing.assert_allclose(w.defocus_angle_deg, ctf["rlnDefocusAngle"].to_numpy(float), atol=1e-3)
        assert w.pixel_size_A == pytest.approx(g.pixel_size_binned_A)
        rows, tilts, _ = _warp_alignment(out / f"{s.name}.xml", g.at_binning(1.0))
        use = g.included_views()
        np.testing.assert_allclose(tilts, g.true_tilt_deg()[use], atol=1e-4)
        np.testing.assert_allclose(rows[:, :4], g.to_imod()[0][use, :4], atol=1e-5)
        np.testing.assert_allclose(rows[:, 4:], g.at_binning(1.0).to_imod()[0][use, 4:], atol=2e-3)
    readme = (out / "README.txt").read_text()
    assert "AxisAngle" in readme and "AreAnglesInverted False" in readme


def test_warp_series_with_inverted_angles_reads_as_the_same_projections(tiny_project_root: Path,
                                                                          tmp_path: Path) -> None:
    """A Warp XML with ``AreAnglesInverted="True"`` (Warp's geometry uses −Angles) describing the same projections
    as our export (stored Angles t, AxisAngle a + 180°: a rotation by −t about −u is one by t about u) reads back
    to the record's alignment, with the stored tilts matching the stack's."""
    from tomoguide.steps.align import _warp_alignment

    project = tiny_project_root / "project"
    out = tmp_path / "warp"
    assert main(["export", str(project), "--to", "warp", str(out)]) == 0
    with _done(project, "exclude") as proj:
        sset, _ = SeriesSet.load(proj.output_path("exclude", "series"))
    g = sset.series[0].geometry
    xml = out / f"{sset.series[0].name}.xml"
    text = xml.read_bytes().decode("utf-8-sig")
    head, rest = text.split("<AxisAngle>", 1)
    body, tail = rest.split("</AxisAngle>", 1)
    turned = "\n".join(f"{float(x) + 180.0:.6f}" for x in body.split())
    inverted = out / "inverted.xml"
    inverted.write_text((head + "<AxisAngle>" + turned + "</AxisAngle>" + tail)
                        .replace('AreAnglesInverted="False"', 'AreAnglesInverted="True"'), encoding="utf-8")
    rows, tilts, notes = _warp_alignment(inverted, g.at_binning(1.0))
    use = g.included_views()
    np.testing.assert_allclose(tilts, g.true_tilt_deg()[use], atol=1e-4)
    np.testing.assert_allclose(rows, g.at_binning(1.0).to_imod()[0][use], atol=2e-3)
    assert any("AreAnglesInverted" in n for n in notes)


def test_steps_write_imod_files_beside_their_results(tiny_project_root: Path) -> None:
    """The files each step writes anyway (issue 17): the binned reconstruction input and the phase-flipped series
    have IMOD's NAME.xf (px of that stack) and NAME.tlt beside their stacks; the picks are an IMOD model per
    tomogram (models/NAME.mod) at the picked voxels, read back by our reader and by teamtomo's imodmodel."""
    project = tiny_project_root / "project"
    with _done(project, "preprocess_for_reconstruction", "ctf_correct", "pick") as proj:
        for sid in ("preprocess_for_reconstruction", "ctf_correct"):
            sset, base = SeriesSet.load(proj.output_path(sid, "series"))
            for s in sset.series:
                g = s.geometry
                assert read_header(s.path("stack", base)).shape[1:] == tuple(g.image_shape_px)
                np.testing.assert_allclose(read_xf(s.path("xf", base)), g.to_imod()[0], atol=2e-3)
                np.testing.assert_allclose(read_tlt(s.path("tlt", base)), g.true_tilt_deg(), atol=1e-4)
        picks = read_particles_star(proj.output_path("pick", "particles")).particles
        tomos, _ = SeriesSet.load(proj.output_path("reconstruct", "tomograms"))
        folder = proj.output_path("pick", "particles").parent
    imodmodel = pytest.importorskip("imodmodel")
    for t in tomos.series:
        nz, ny, nx = t.info["shape_zyx"]
        vox = t.geometry.pixel_size_binned_A
        mine = picks[picks["rlnTomoName"] == t.name]
        centred = mine[["rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst",
                        "rlnCenteredCoordinateZAngst"]].to_numpy(float)
        voxels = centred / vox + (np.array([nx, ny, nz]) - 1) / 2.0
        model = read_mod_points(folder / "models" / f"{t.name}.mod")
        assert model.image_shape_xyz == (nx, ny, nz) and model.pixel_size == pytest.approx(vox)
        np.testing.assert_allclose(model.xyz, voxels + [0.5, 0.5, 0.0], atol=1e-3)
        df = imodmodel.read(folder / "models" / f"{t.name}.mod")
        assert len(df) == len(mine)
