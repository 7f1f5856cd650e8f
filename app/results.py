"""The end of the workflow: what the project produced and what it means (no Qt here).

:func:`final_summary` reads the last averaging step that is done (``refine_fine``, else ``reconstruct_particle``,
``refine``, ``initial_model``) and returns a :class:`FinalSummary`: the map, the half maps and the other files with
their absolute paths, the resolution at FSC 0.143 and the Nyquist limit of the voxels, the particle count, the
symmetry, and :func:`resolution_meaning`: what that resolution means for that number of particles and that voxel
size (e.g. "20 Å from 16 particles at 8 Å voxels is what the tiny demo can give"). :func:`viewer_commands` gives,
per 3D viewer (ChimeraX, napari, IMOD's 3dmod), the command line that opens the map and whether the program is on
PATH. :func:`summary_text` is the same for the terminal (``tomoguide run`` prints it when the last step is done);
the wizard's summary page (:mod:`tomoguide.pages.summary_page`) shows it with the FSC plot and the isosurface.

Resolution and particle count: the gold-standard FSC reaches 0.143 where the signal of the two half maps in a shell
is about as large as their noise; the signal grows with the number of particles (times the symmetry's copies), and
the resolution improves with the *logarithm* of that number (Rosenthal & Henderson 2003, J. Mol. Biol. 333:721):
each halving of the resolution needs many times more particles. The voxel size sets a hard limit, Nyquist = 2 ×
voxel, that no map can pass.
"""

from __future__ import annotations

import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: the averaging steps, the most refined first: the summary shows the first one that is done
FINAL_STEPS: tuple[str, ...] = ("refine_fine", "reconstruct_particle", "refine", "initial_model")
#: file roles of an average, with what they are
MAP_FILES: tuple[tuple[str, str], ...] = (
    ("map", "merged map (FSC-weighted, low-passed to the resolution)"),
    ("half1", "half map 1 (unfiltered)"),
    ("half2", "half map 2 (unfiltered)"),
    ("mask", "mask used for the FSC"),
    ("particles", "particles with their refined poses (RELION 5 STAR)"),
)
#: viewer name -> (program names looked up on PATH, extra note)
VIEWERS: dict[str, tuple[tuple[str, ...], str]] = {
    "ChimeraX": (("chimerax", "ChimeraX"), ""),
    "napari": (("napari",), "MRC files need the napari-mrcfile-reader plugin"),
    "3dmod": (("3dmod",), "IMOD"),
}
#: the simulator's demo presets: how many particles they hold and the resolution (Å) they reach (README, bench/)
DEMO_EXPECTED: dict[str, tuple[int, float]] = {"tiny": (16, 20.0), "small": (300, 5.9)}  # at 2 Å voxels


@dataclass
class ViewerCommand:
    """How to open the map in one 3D viewer: ``argv`` (program and files), whether the program was found on
    PATH (``found``: its path, else None) and a copyable ``command_line``."""

    name: str
    argv: list[str]
    found: str | None
    note: str = ""

    @property
    def command_line(self) -> str:
        return shlex.join(self.argv)


@dataclass
class FinalSummary:
    """What the workflow produced (see the module docstring). Paths are absolute."""

    step_id: str
    step_title: str
    complete: bool  # the workflow's last step is done and up to date
    folder: Path
    files: dict[str, Path]
    resolution_A: float | None
    voxel_A: float
    nyquist_A: float
    box_px: int
    symmetry: str
    n_particles: int | None
    meaning: list[str] = field(default_factory=list)
    next_step: str | None = None  # the first step not done, when the workflow is not complete
    record: Any = None  # the AverageRecord


def symmetry_order(symmetry: str) -> int:
    """How many copies of the asymmetric unit a point group holds (C1 → 1, O → 24, I → 60); 1 when unknown."""
    from tomoguide.compute.symmetry import symmetry_matrices

    try:
        return int(len(symmetry_matrices(symmetry)))
    except (ValueError, KeyError):
        return 1


def _features(resolution_A: float) -> str:
    """What apoferritin shows at this resolution."""
    r = resolution_A
    if r > 15.0:
        return (f"At {r:.0f} Å apoferritin is a smooth hollow shell (about 120 Å across, 80 Å inside); its 24 "
                "subunits and the channels through the shell appear only at about 12 Å and better, so a "
                "featureless ball-like shell is what this resolution can show — not a sign of a wrong symmetry.")
    if r > 10.0:
        return (f"At {r:.0f} Å the shell's 24 subunits and its 3-fold and 4-fold channels show; secondary "
                "structure (α-helices) needs about 9 Å or better.")
    if r > 6.0:
        return (f"At {r:.1f} Å the subunits' α-helices begin to show as rods (from about 9 Å); separate β-strands "
                "and side chains need better than about 4.5 Å.")
    return f"At {r:.1f} Å the α-helices are clearly resolved; side chains need better than about 4 Å."


def resolution_meaning(resolution_A: float | None, voxel_A: float, n_particles: int | None, symmetry: str,
                       *, demo_preset: str | None = None) -> list[str]:
    """Sentences that say what the resolution means for the particle count and the voxel size."""
    nyq = 2.0 * voxel_A
    if resolution_A is None:
        return [f"No resolution: this map has no half maps (Nyquist of its {voxel_A:g} Å voxels: {nyq:.1f} Å)."]
    order = symmetry_order(symmetry)
    n_text = "an unknown number of particles" if n_particles is None else f"{n_particles} particles"
    copies = (f"; with {symmetry} symmetry each particle counts {order} times, "
              f"{n_particles * order} asymmetric units" if n_particles is not None and order > 1 else "")
    out = [f"{resolution_A:.1f} Å from {n_text} at {voxel_A:g} Å voxels (Nyquist {nyq:.1f} Å{copies})."]
    ratio = resolution_A / nyq
    if ratio <= 1.1:
        out.append(f"The map reached the Nyquist limit of its voxels ({100 / ratio:.0f} % of what {voxel_A:g} Å "
                   "voxels can show): the voxel size, not the data, limits it. Smaller voxels (a finer binning "
                   "when re-extracting) can show finer detail when the particles allow it.")
    elif n_particles is not None and n_particles < 100:
        out.append(f"With only {n_particles} particles the number of particles limits the resolution, not the "
                   f"{voxel_A:g} Å voxels: the resolution improves with the logarithm of the particle count "
                   "(Rosenthal & Henderson 2003), so a few dozen particles give about 20 Å where a few hundred "
                   "give about 8 Å. This is what a data set this small can give, not a mistake.")
    else:
        out.append(f"The map stops short of the Nyquist limit ({ratio:.1f} × Nyquist): the particles' alignment, "
                   "their number, the CTF or the tilt-series alignment limit it, not the voxels.")
    out.append(_features(resolution_A))
    if demo_preset in DEMO_EXPECTED:
        n_demo, res_demo = DEMO_EXPECTED[demo_preset]
        head = f"The {demo_preset} demo has {n_demo} particles and reaches about {res_demo:.0f} Å: "
        if resolution_A <= 1.3 * res_demo:
            out.append(head + f"{resolution_A:.0f} Å from {n_text} at {voxel_A:g} Å voxels is what it can give.")
        else:
            out.append(head + f"{resolution_A:.0f} Å is worse than it usually gives; look at the earlier steps' "
                              "results (alignment, CTF, picking) for what went wrong.")
    return out


def viewer_commands(paths: list[Path], which: Any = None) -> list[ViewerCommand]:
    """Per 3D viewer, the command line that opens ``paths`` and whether the program is on PATH (``which``:
    :func:`shutil.which` unless given, for tests)."""
    which = which or shutil.which
    out = []
    for name, (programs, note) in VIEWERS.items():
        found = next((p for p in (which(prog) for prog in programs) if p), None)
        exe = found or programs[0]
        files = [str(p) for p in paths] if name == "ChimeraX" else [str(paths[0])]
        out.append(ViewerCommand(name=name, argv=[exe, *files], found=found, note=note))
    return out


def _export_parser(parser: Any = None) -> Any:
    """The ``export`` sub-command's parser of the command line, or None when it has none."""
    if parser is None:
        from tomoguide.cli import build_parser

        parser = build_parser()
    for action in parser._subparsers._group_actions if parser._subparsers else []:  # noqa: SLF001 - argparse API
        choices = getattr(action, "choices", None) or {}
        if "export" in choices:
            return choices["export"]
    return None


def export_usage(parser: Any = None) -> str | None:
    """The usage line of ``tomoguide export`` when the command line has that command, else None."""
    sub = _export_parser(parser)
    return None if sub is None else sub.format_usage().strip()


def export_commands(project_dir: Path, parser: Any = None) -> list[str]:
    """Ready-to-run ``tomoguide export`` command lines for this project, one per format when the command takes
    ``--to FORMAT`` and an output folder (``PROJECT/export/FORMAT``); [] without an export command or when its
    arguments are not of that form (then :func:`export_usage` is all there is to show)."""
    sub = _export_parser(parser)
    if sub is None:
        return []
    to = next((a for a in sub._actions if "--to" in a.option_strings), None)  # noqa: SLF001 - argparse API
    positionals = [a for a in sub._actions if not a.option_strings]  # noqa: SLF001
    if to is None or not to.choices or len(positionals) != 2:
        return []
    project_dir = Path(project_dir).resolve()
    return [shlex.join(["tomoguide", "export", str(project_dir), "--to", str(fmt), str(project_dir / "export" / fmt)])
            for fmt in to.choices]


def final_summary(project: Any) -> FinalSummary | None:
    """The summary of the most refined average that is done (None when no averaging step is done)."""
    from tomoguide.steps import registry
    from tomoguide.steps.average_records import AverageRecord

    ids = registry.ids()
    for step_id in FINAL_STEPS:
        st = project.data.steps.get(step_id)
        if st is None or st.status != "done" or "average" not in st.outputs:
            continue
        try:
            rec, folder = AverageRecord.load(project.output_path(step_id, "average"))
        except (OSError, ValueError):
            continue
        files: dict[str, Path] = {}
        for role, _ in MAP_FILES:
            try:
                p = rec.path(role, folder)
            except (KeyError, ValueError):
                continue
            if p.exists():
                files[role] = p.resolve()
        n = st.metrics.get("n_particles")
        if not isinstance(n, int):
            n = _count_particles(files.get("particles"))
        last = ids[-1]
        complete = project.is_up_to_date(last)
        preset = project.data.dataset.get("demo_preset") if isinstance(project.data.dataset, dict) else None
        return FinalSummary(
            step_id=step_id, step_title=registry.get(step_id).title, complete=complete, folder=folder.resolve(),
            files=files, resolution_A=rec.resolution_A, voxel_A=rec.voxel_A, nyquist_A=2.0 * rec.voxel_A,
            box_px=rec.box_px, symmetry=rec.symmetry, n_particles=n,
            meaning=resolution_meaning(rec.resolution_A, rec.voxel_A, n, rec.symmetry,
                                       demo_preset=preset if isinstance(preset, str) else None),
            next_step=None if complete else project.first_not_done(), record=rec)
    return None


def _count_particles(star: Path | None) -> int | None:
    if star is None:
        return None
    from tomoguide.compute.io.star import read_particles_star

    try:
        return int(len(read_particles_star(star).particles))
    except (OSError, ValueError):
        return None


def summary_text(s: FinalSummary, project_dir: Path | None = None) -> str:
    """The summary for the terminal: the files with their paths, the resolution and what it means, the viewers."""
    res = f"{s.resolution_A:.2f} Å at FSC 0.143" if s.resolution_A else "no resolution (no half maps)"
    lines = [f"Result of “{s.step_title}” ({s.step_id}): {res}; Nyquist {s.nyquist_A:.2f} Å "
             f"({s.voxel_A:g} Å voxels, box {s.box_px} px, symmetry {s.symmetry}"
             + (f", {s.n_particles} particles)" if s.n_particles is not None else ")")]
    if not s.complete and s.next_step:
        lines.append(f"  (the workflow is not finished: next step {s.next_step})")
    labels = dict(MAP_FILES)
    for role, path in s.files.items():
        lines.append(f"  {role:<10} {path}   — {labels.get(role, role)}")
    lines.append("What this resolution means:")
    lines += [f"  {m}" for m in s.meaning]
    maps = [s.files[r] for r in ("map", "half1", "half2") if r in s.files]
    if maps:
        lines.append("Open the map:")
        for v in viewer_commands(maps):
            where = "" if v.found else "   (not found on PATH)"
            note = f"   [{v.note}]" if v.note and not v.found else ""
            lines.append(f"  {v.name:<9} {v.command_line}{where}{note}")
    if project_dir is not None:
        commands = export_commands(project_dir)
        usage = export_usage()
        if commands:
            lines.append("Export:")
            lines += [f"  {c}" for c in commands]
        elif usage:
            lines.append(f"Export: {usage}")
    return "\n".join(lines)
