"""The workflow's entry points (issue 17): where a new project starts and the parameters each start sets.

Shared by the wizard's start screen (:mod:`tomoguide.pages.app`) and ``tomoguide new --entry`` (no Qt here).
The entries: raw movies with their SerialEM .mdoc files (the whole workflow); tilt series without movies (stacks
with .rawtlt/.tlt or their mdoc: X-ray erasing is the first step that computes); tilt series with an existing
alignment and CTF (IMOD/AreTomo/Warp/RELION 5 files: the reconstruction is the first step that computes);
particles from RELION 5 / WarpTools (the averaging steps compute).
"""

from __future__ import annotations

from pathlib import Path

from tomoguide.steps.import_movies import DEFAULT_PATTERN


#: the entry points of the start screen: key, button text, help for a newcomer, the folder fields it asks for
ENTRIES: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("movies", "Raw movies + mdoc (the whole workflow)",
     "The usual start: the session folder with SerialEM's .mdoc files and the tilt movies. Every step is computed "
     "here, from frame alignment to the average.", ("data", "pattern")),
    ("tilt series", "Tilt series without movies",
     "You already have motion-corrected tilt series: stacks (.st, .mrc, .mrcs) with their tilt angles beside them "
     "(NAME.rawtlt or NAME.tlt from IMOD, or the stack's mdoc NAME.st.mdoc), optionally a dose list NAME.dose and "
     "a defocus file (NAME.defocus, NAME_ctf.txt). Frame alignment is skipped; X-ray erasing is the first step "
     "that computes.", ("data",)),
    ("alignment", "Tilt series with an existing alignment and CTF",
     "You aligned the tilt series elsewhere (IMOD NAME.xf + NAME.tlt, AreTomo NAME.aln, RELION 5 NAME.star, Warp "
     "NAME.xml) and "
     "estimated the CTF (CTFFIND NAME_ctf.txt, ctfplotter NAME.defocus, Warp NAME.xml, RELION 5 NAME.star): the "
     "stacks are imported, the alignment and CTF read from their folders, and the workflow computes from the "
     "reconstruction on.", ("data", "alignment", "ctf")),
    ("particles", "Particles from RELION 5 / WarpTools",
     "You have particles (a RELION 5 / WarpTools optimisation set, or a particles STAR with its tomograms.star, and "
     "their pseudo-subtomograms, 2D stacks or 3D): they are imported with their poses and refined locally from them "
     "(gold standard). Without the tilt series there is no re-extraction at finer sampling: the project ends at "
     "the refinement.", ("particles",)),
)


def particles_entry() -> tuple[str, str] | None:
    """``(source value, file parameter)`` of the extraction step's particles-from-files source, or None while the
    step has no such source (the start screen then shows the entry disabled)."""
    from tomoguide.steps.extract import Extract

    meta = Extract.Params.meta()
    src = meta.get("source")
    if src is None or len(src.choices) < 2:
        return None
    value = next(c for c in src.choices if c != src.default)
    for name, m in meta.items():
        if m.widget in ("file", "directory") and ("source", "=", value) in m.enabled_if:
            return str(value), name
    return None


def entry_params(entry: str, *, data: str = "", pattern: str = "", alignment: str = "", ctf: str = "",
                 particles: str = "") -> dict[str, dict[str, object]]:
    """The project parameters an entry point sets (paths as given; see :data:`ENTRIES`). ``ValueError`` with a
    sentence for the start screen when a folder the entry needs is missing."""
    def need(value: str, what: str) -> str:
        if not value or not Path(value).expanduser().exists():
            raise ValueError(f"Choose {what}.")
        return str(Path(value).expanduser().resolve())

    if entry == "movies":
        return {"import_movies": {"files_dir": need(data, "the folder with the .mdoc files and movies"),
                                  "pattern": pattern or DEFAULT_PATTERN}}
    if entry == "tilt series":
        return {"import_movies": {"source": "tilt series",
                                  "files_dir": need(data, "the folder with the tilt-series stacks")}}
    if entry == "alignment":
        align_dir = need(alignment, "the folder with the alignment files")
        return {"import_movies": {"source": "tilt series",
                                  "files_dir": need(data, "the folder with the tilt-series stacks")},
                "align": {"source": "files", "alignment_dir": align_dir},
                "ctf_estimate": {"source": "files", "ctf_dir": need(ctf, "the folder with the CTF files")
                                 if ctf else align_dir}}
    if entry == "particles":
        found = particles_entry()
        if found is None:
            raise ValueError("Particles from RELION 5 / WarpTools are not available in this version yet.")
        value, name = found
        return {"extract": {"source": value, name: need(particles, "the particles STAR file")}}
    raise ValueError(f"unknown entry {entry!r}")
