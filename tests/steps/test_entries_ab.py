"""Entry points (a) and (b) of issue 17 against the full workflow of the tiny simulated project.

(a) the demo's own motion-corrected tilt series (the stacks ``motion_ctf`` wrote, with ``.rawtlt`` and a two-column
    dose list) imported as tilt series without movies and run to the tomogram: the same tomogram as the full
    workflow's (correlation ≥ 0.99);
(b) the full project exported for IMOD (``tomoguide export --to imod``: ``.st``, ``.rawtlt``, ``.xf``, ``.tlt``) and
    its CTF written as CTFFIND text and as an IMOD ctfplotter file: a project that imports the stack, reads the
    alignment and the CTF from those files and reconstructs gives the same tomogram (correlation ≥ 0.99); the
    steps show where their results came from.

The helpers are used by ``bench/entries.py`` on the small preset too.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

RECONSTRUCT = "reconstruct"


def _params(project: Path) -> dict[str, dict[str, Any]]:
    return {k: dict(v["params"]) for k, v in json.loads((project / "project.json").read_text())["steps"].items()}


def tomograms(project: Path) -> dict[str, np.ndarray]:
    """The reconstruct step's tomograms by series name."""
    from tomoguide.compute.io.mrc import read_mrc
    from tomoguide.project import Project
    from tomoguide.steps.records import SeriesSet

    with Project.open(project, readonly=True) as proj:
        sset, base = SeriesSet.load(proj.output_path(RECONSTRUCT, "tomograms"))
    out = {}
    for s in sset.series:
        role = "tomogram" if "tomogram" in s.files else "stack"
        out[s.name] = np.asarray(read_mrc(s.path(role, base))[0], np.float64)
    return out


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def tilt_series_folder(project: Path, out: Path, *, defocus: bool = False) -> Path:
    """The project's motion-corrected stacks as an IMOD-style folder: ``NAME.st`` (views in ascending tilt),
    ``NAME.rawtlt``, ``NAME.dose`` (prior dose, dose) and, with ``defocus``, the frame-alignment step's CTF as
    ``NAME_ctf.txt`` (CTFFIND)."""
    from tomoguide.compute.io.star import read_ctf_star
    from tomoguide.project import Project
    from tomoguide.steps.records import SeriesSet

    out.mkdir(parents=True, exist_ok=True)
    with Project.open(project, readonly=True) as proj:
        sset, base = SeriesSet.load(proj.output_path("motion_ctf", "series"))
    for s in sset.series:
        g = s.geometry
        shutil.copyfile(s.path("stack", base), out / f"{s.name}.st")
        (out / f"{s.name}.rawtlt").write_text("".join(f"{t:8.3f}\n" for t in g.tilt_angles_deg))
        (out / f"{s.name}.dose").write_text("".join(f"{p:.5f} {d:.5f}\n" for p, d in zip(g.prior_dose_e_A2,
                                                                                         g.dose_e_A2)))
        if defocus:
            write_ctffind(out / f"{s.name}_ctf.txt", read_ctf_star(s.path("ctf_star", base)))
    return out


def write_ctffind(path: Path, ctf: Any) -> None:
    """A CTFFIND 4.1 diagnostic text file with the rows of a CTF STAR table (view order)."""
    lines = ["# Output from CTFFind version 4.1.14, run on 2026-12-07 08:00:00",
             "# Input file: stack.mrc ; Number of micrographs: %d" % len(ctf),
             "# Columns: #1 - micrograph number; #2 - defocus 1 [Angstroms]; #3 - defocus 2; #4 - azimuth of "
             "astigmatism; #5 - additional phase shift [radians]; #6 - cross correlation; #7 - spacing (in Angstroms) "
             "up to which CTF rings were fit successfully"]
    for i, r in enumerate(ctf.itertuples()):
        lines.append(f"{i + 1:.6f} {r.rlnDefocusU:.2f} {r.rlnDefocusV:.2f} {r.rlnDefocusAngle:.2f} 0.000000 0.1 8.0")
    path.write_text("\n".join(lines) + "\n")


def write_ctfplotter(path: Path, ctf: Any, tilts: Any) -> None:
    """An IMOD ctfplotter version-3 defocus file (astigmatism, one view per line, nm) of a CTF STAR table."""
    lines = ["1 0 0. 0. 0 3"]
    for i, (r, t) in enumerate(zip(ctf.itertuples(), tilts)):
        lines.append(f"{i + 1} {i + 1} {t:.2f} {t:.2f} {r.rlnDefocusU / 10:.3f} {r.rlnDefocusV / 10:.3f} "
                     f"{r.rlnDefocusAngle:.2f}")
    path.write_text("\n".join(lines) + "\n")


def run_entry(project: Path, root: Path, changes: dict[str, dict[str, Any]], until: str = RECONSTRUCT) -> Path:
    """A new project at ``root`` with the parameters of ``project`` and ``changes``, run up to ``until``."""
    from tomoguide.cli import run_steps
    from tomoguide.project import Project

    params = _params(project)
    for sid, values in changes.items():
        params.setdefault(sid, {}).update(values)
    Project.create(root, params=params).close()
    rc = run_steps(root, until=until, quiet=True)
    assert rc == 0
    return root


def entry_a(project: Path, work: Path) -> tuple[Path, dict[str, float]]:
    """Entry (a) on ``project``: returns the new project and the correlation of each tomogram with the original's."""
    imp = _params(project)["import_movies"]
    folder = tilt_series_folder(project, work / "tilt_series")
    from tomoguide.project import Project

    with Project.open(project, readonly=True) as proj:
        axis = float(next(iter(proj.state("import_movies").metrics["series"].values()))["tilt_axis_deg"])
    new = run_entry(project, work / "entry_a", {"import_movies": {
        "source": "tilt series", "files_dir": str(folder), "tilt_axis_deg": axis,
        "voltage_kV": imp["voltage_kV"], "cs_mm": imp["cs_mm"], "amplitude_contrast": imp["amplitude_contrast"]}})
    full, ours = tomograms(project), tomograms(new)
    return new, {n: correlation(full[n], ours[n]) for n in full}


def entry_b(project: Path, work: Path) -> tuple[Path, dict[str, float]]:
    """Entry (b): the IMOD export of ``project`` (stack, angles, alignment) and its CTF (CTFFIND for the first
    series, ctfplotter for the others) as a new project reading alignment and CTF from files."""
    from tomoguide.compute.io.star import read_ctf_star
    from tomoguide.export import export_project
    from tomoguide.project import Project
    from tomoguide.steps.records import SeriesSet

    imod_dir = work / "imod"
    export_project(project, "imod", imod_dir)
    ctf_dir = work / "ctf"
    ctf_dir.mkdir()
    with Project.open(project, readonly=True) as proj:
        sset, base = SeriesSet.load(proj.output_path("ctf_estimate", "series"))
        axis = float(next(iter(proj.state("import_movies").metrics["series"].values()))["tilt_axis_deg"])
    for k, s in enumerate(sset.series):
        ctf = read_ctf_star(s.path("ctf_star", base))
        if k % 2 == 0:
            write_ctffind(ctf_dir / f"{s.name}_ctf.txt", ctf)
        else:
            write_ctfplotter(ctf_dir / f"{s.name}.defocus", ctf, s.geometry.tilt_angles_deg)
    stacks = work / "stacks"  # the import reads the stack and its nominal angles; the alignment files stay apart
    stacks.mkdir()
    for s in sset.series:
        for ext in (".st", ".rawtlt"):
            shutil.copyfile(imod_dir / f"{s.name}{ext}", stacks / f"{s.name}{ext}")
    imp = _params(project)["import_movies"]
    new = run_entry(project, work / "entry_b", {
        "import_movies": {"source": "tilt series", "files_dir": str(stacks), "tilt_axis_deg": axis,
                          "voltage_kV": imp["voltage_kV"], "cs_mm": imp["cs_mm"],
                          "amplitude_contrast": imp["amplitude_contrast"]},
        "align": {"source": "files", "alignment_dir": str(imod_dir), "alignment_binning": 1.0},
        "ctf_estimate": {"source": "files", "ctf_dir": str(ctf_dir)}})
    full, ours = tomograms(project), tomograms(new)
    return new, {n: correlation(full[n], ours[n]) for n in full}


@pytest.fixture(scope="module")
def full_project(tiny_project_root: Path) -> Path:
    return tiny_project_root / "project"


def test_entry_a_tilt_series_give_the_same_tomogram(full_project: Path, tmp_path: Path) -> None:
    from tomoguide.project import Project

    new, cc = entry_a(full_project, tmp_path)
    assert cc and min(cc.values()) >= 0.99, cc
    with Project.open(new, readonly=True) as proj:
        assert proj.origin("import_movies") == "tilt series" and proj.origin("motion_ctf") == "imported"
        assert proj.origin("xray_erase") is None  # the first step that computes
        st = proj.state("motion_ctf")
        assert st.metrics["source"] == "imported"
        assert all(m["ctf_source"] == "fitted" for m in st.metrics["series"].values())
        imp = proj.state("import_movies").metrics["series"]
    with Project.open(full_project, readonly=True) as proj:
        full_imp = proj.state("import_movies").metrics["series"]
    for name, m in imp.items():  # dose and pixel size came back from the dose list and the MRC header
        assert m["dose_per_tilt_e_A2"] == pytest.approx(full_imp[name]["dose_per_tilt_e_A2"], rel=1e-4)
        assert m["pixel_size_A"] == pytest.approx(full_imp[name]["pixel_size_A"], rel=1e-5)


def test_entry_b_alignment_and_ctf_from_files_give_the_same_tomogram(full_project: Path, tmp_path: Path) -> None:
    from tomoguide.compute.io.star import read_ctf_star
    from tomoguide.project import Project
    from tomoguide.steps.records import SeriesSet

    new, cc = entry_b(full_project, tmp_path)
    assert cc and min(cc.values()) >= 0.99, cc
    with Project.open(new, readonly=True) as proj:
        assert proj.origin("align") == "from files" and proj.origin("ctf_estimate") == "from files"
        status = {s["id"]: s for s in proj.status_dict()["steps"]}
        assert status["align"]["origin"] == "from files"
        ours, base = SeriesSet.load(proj.output_path("ctf_estimate", "series"))
    with Project.open(full_project, readonly=True) as proj:
        full, fbase = SeriesSet.load(proj.output_path("ctf_estimate", "series"))
    for a, b in zip(full.series, ours.series, strict=True):  # the CTF read back: within the files' precision
        ta, tb = read_ctf_star(a.path("ctf_star", fbase)), read_ctf_star(b.path("ctf_star", base))
        np.testing.assert_allclose(tb["rlnDefocusU"], ta["rlnDefocusU"], atol=0.02)
        np.testing.assert_allclose(tb["rlnDefocusV"], ta["rlnDefocusV"], atol=0.02)
