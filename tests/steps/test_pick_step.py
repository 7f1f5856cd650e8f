"""The picking step on the tiny simulated data: template matching against the truth, and imports that agree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tomoguide import synth
from tomoguide.compute.io import coords
from tomoguide.compute.io.star import read_particles_star
from tomoguide.compute.pick import match_to_truth, register_translation
from tomoguide.demo import demo_params
from tomoguide.project import Project
from tomoguide.runner import StepRun, run_to_end
from tomoguide.steps import registry
from tomoguide.steps.pick import centre_shapes
from tomoguide.steps.records import SeriesSet


@pytest.fixture(scope="module")
def picked(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Project:
    params = demo_params(tiny_dataset / "data", synth.PRESETS["tiny"])
    proj = Project.create(tmp_path_factory.mktemp("p7") / "proj", params=params)
    ids = registry.ids()
    for step in ids[: ids.index("pick") + 1]:
        assert run_to_end(StepRun(proj, step)).status == "done", step
    yield proj
    proj.close()


def _shapes(proj: Project) -> dict[str, tuple[int, int, int]]:
    sset, _ = SeriesSet.load(proj.output_path("reconstruct", "tomograms"))
    return {s.name: tuple(reversed(s.info["shape_zyx"])) for s in sset.series}


def test_template_matching_finds_the_true_particles(picked: Project, tiny_dataset: Path) -> None:
    ours = read_particles_star(picked.output_path("pick", "particles")).particles
    truth = read_particles_star(tiny_dataset / "truth" / "particles.star").particles
    cols = ["rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst", "rlnCenteredCoordinateZAngst"]
    p, t = ours[cols].to_numpy(float), truth[cols].to_numpy(float)
    shift = register_translation(p, t, max_shift=120.0, tolerance=30.0)
    assert np.abs(shift).max() < 60.0  # the alignment's arbitrary origin: a few voxels at most
    m = match_to_truth(p + shift, t, max_distance=30.0)
    assert m["recall"] >= 15 / 16 and m["false_fraction"] <= 1 / 16, m
    assert "rlnAutopickFigureOfMerit" in ours.columns or picked.data.steps["pick"].metrics["n_particles"] == len(p)


def test_imports_from_star_text_and_sqlite_give_the_same_table(picked: Project, tmp_path: Path) -> None:
    shapes = _shapes(picked)
    voxel = SeriesSet.load(picked.output_path("reconstruct", "tomograms"))[0].series[0].geometry.pixel_size_binned_A
    reference = coords.read_relion_particles(picked.output_path("pick", "particles"), centre_shapes(shapes), voxel)
    files = {"star": picked.output_path("pick", "particles"), "txt": tmp_path / "picks.txt",
             "sqlite": tmp_path / "picks.sqlite"}
    coords.write_text_coords(files["txt"], reference)
    coords.write_scipion_sqlite(files["sqlite"], reference, tomo_shapes=shapes, origin="center")
    tables = {}
    for kind, path in files.items():
        picked.set_params("pick", {"method": "import", "coordinates_file": str(path)})
        assert run_to_end(StepRun(picked, "pick")).status == "done", kind
        tables[kind] = coords.read_relion_particles(picked.output_path("pick", "particles"), centre_shapes(shapes),
                                                    voxel)
    for kind, table in tables.items():
        assert len(table) == len(reference) > 10, kind
        np.testing.assert_allclose(table.xyz_px, reference.xyz_px, atol=1e-3, err_msg=kind)
        assert list(table.tomo_name) == list(reference.tomo_name)
    picked.set_params("pick", {"method": "template", "coordinates_file": ""})


def test_import_of_a_missing_file_is_refused(picked: Project) -> None:
    from tomoguide.runner import RunRefused

    picked.set_params("pick", {"method": "import", "coordinates_file": "/nonexistent/picks.star"})
    with pytest.raises(RunRefused) as err:
        StepRun(picked, "pick").preflight()
    assert "picks.star" in str(err.value)
    picked.set_params("pick", {"method": "template", "coordinates_file": ""})
