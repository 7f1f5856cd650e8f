"""``tomoguide demo``: simulate the demo data set and set up its project.

``prepare_demo(out)`` writes ``out/data`` (movies, .mdoc files, gain) and ``out/truth`` with
:func:`tomoguide.synth.generate` — skipped when ``out/truth/summary.json`` already records the same simulation
parameters — and creates the project ``out/project`` with the import step pointed at the data (an existing
project there is reused, so a demo can be resumed). Parameters that the tutorial leaves to the data (pixel size,
dose per tilt) stay empty: they are read from the mdoc, as a trainee would do.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


from tomoguide.project import PROJECT_FILE, Project


def _same_simulation(truth_summary: Path, params: Any) -> bool:
    try:
        recorded = json.loads(truth_summary.read_text()).get("params")
    except (OSError, ValueError):
        return False
    return recorded == json.loads(params.model_dump_json())


def demo_import_params(data_dir: Path) -> dict[str, Any]:
    """Import-step parameters for simulated data in ``data_dir``: the session folder only. Everything else is found
    as for any SerialEM session (the mdocs at any depth, the movies by name, the gain file, the tilt axis from the
    mdoc, the gain's orientation from the movies)."""
    return {"files_dir": str(Path(data_dir).resolve())}


def demo_params(data_dir: Path, sim: Any) -> dict[str, dict[str, Any]]:
    """Parameters of the demo project for simulated data: only the session folder — everything else is the steps'
    defaults, read from the mdoc or chosen from the data, as for any session a user brings (issue 14). The tiny
    preset (16 particles) also shortens the averaging steps, so that tests run through them in seconds."""
    params: dict[str, dict[str, Any]] = {"import_movies": demo_import_params(data_dir)}
    for step_id, values in demo_deliberate(sim).items():
        params[step_id] = {name: v["value"] for name, v in values.items()}
    return params


def demo_deliberate(sim: Any) -> dict[str, dict[str, dict[str, Any]]]:
    """The values a demo preset sets on purpose, outside the usual ranges, with why: step id -> field ->
    ``{"value": v, "why": text}``. Recorded in the project (``dataset["deliberate"]``), so the page shows the
    reason instead of a warning, and the checks do not warn about the demo's own values. Only the tiny preset
    (16 particles) has any: it shortens the averaging steps so that tests run through them in seconds."""
    n = sim.n_particles * sim.n_series
    if n >= 100:
        return {}
    why = f"chosen for the tiny demo's {n} particles — {{what}}"
    return {
        "initial_model": {"n_minibatches": {"value": 8, "why": why.format(
            what="8 mini-batches already show each particle several times (the tutorial's 40 is for thousands)")}},
        "refine": {"max_iterations": {"value": 3, "why": why.format(
            what="3 iterations keep the demo to a minute; its particle count, not the iterations, limits the "
                 "resolution")}},
        "refine_fine": {"max_iterations": {"value": 2, "why": why.format(
            what="2 iterations keep the demo to a minute; its particle count, not the iterations, limits the "
                 "resolution")}},
    }


def prepare_demo(out: Path, *, preset: str = "small", seed: int | None = None,
                 progress_bar: Callable[[str], Any] | None = None,
                 progress: Callable[[float, str], None] | None = None) -> Path:
    """Simulate (unless already done with the same parameters) and create the demo project; returns its folder.

    ``progress_bar(title)`` may return a tqdm-like bar (command line); ``progress(fraction, message)`` is called
    directly otherwise (wizard).
    """
    from tomoguide import synth

    out = Path(out)
    if preset not in synth.PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(synth.PRESETS)}")
    params = synth.PRESETS[preset]
    if seed is not None:
        params = params.model_copy(update={"seed": seed})
    summary = out / "truth" / "summary.json"
    if not _same_simulation(summary, params):
        bar = progress_bar(f"simulating the {preset} data set") if progress_bar else None

        def report(fraction: float, message: str) -> None:
            if bar is not None:
                bar.n = int(1000 * fraction)
                bar.set_postfix_str(message[:60], refresh=False)
                bar.refresh()
            if progress is not None:
                progress(fraction, message)

        synth.generate(out, params, progress=report)
        if bar is not None:
            bar.close()
    project_dir = out / "project"
    if not (project_dir / PROJECT_FILE).exists():
        proj = Project.create(project_dir, name=f"tomoguide demo ({preset})", params=demo_params(out / "data", params))
        try:  # what the summary and the pages say about the preset's own values
            proj.data.dataset["demo_preset"] = preset
            deliberate = demo_deliberate(params)
            if deliberate:
                proj.data.dataset["deliberate"] = deliberate
            proj.save()
        finally:
            proj.close()
    return project_dir
