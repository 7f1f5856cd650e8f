"""Running one step for some of its units only — ``tomoguide run PROJECT --only STEP --item TS_03`` (issue 18) —
and merging the result into the project.

For a site that wraps tomoguide in plain SLURM arrays or a workflow manager: each task runs one tilt series of a
step. An item run, like any run, holds the project's lock while it runs and merges into the step's current run, so
the tasks on one project run one after another (a SLURM array with ``%1``, or a job dependency chain); a task
that finds the project locked is refused with the lock holder named and can be resubmitted. How:

1. :func:`item_problems`: the step must have a done run already (the results of the other series come from it),
   its outputs must be per-tilt-series records (``series.json``), and every item must be a series of its input.
2. :func:`restrict_upstream`: the step's inputs are seen through filtered copies — for every input record that
   lists tilt series (``series.json``, the import's ``tilt_series.json``) a copy holding only the items, in a
   ``run-…-items-<step>.partial`` folder beside the run (its files hard-linked, so nothing large is copied; a
   program killed meanwhile leaves a ``.partial`` folder that the next open removes). The step runs as usual on
   them, for the items only.
3. :func:`merge_items`: the new run folder receives the other series' files from the previous run (hard links) and
   its ``series.json`` lists every series in the previous order, the items' entries replaced by the new ones; the
   metrics per series are merged the same way. The runner then records the run as any other: later steps become
   stale where the content changed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Collection
from pathlib import Path
from typing import Any

from tomoguide.integrity import guarded_path
from tomoguide.steps.records import SERIES_FILE, TILT_SERIES_FILE, SeriesSet

SERIES_RECORDS = (SERIES_FILE, TILT_SERIES_FILE)


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def item_problems(project: Any, step_id: str, items: Collection[str]) -> list[str]:
    """Why ``--item`` cannot run ``step_id`` for ``items`` (empty when it can)."""
    st = project.data.steps.get(step_id)
    if st is None or st.status != "done" or not st.outputs:
        return [f"--item: run “{step_id}” for every tilt series first (the other series' results come from that run)"]
    if st.hash != project.step_hash(step_id):
        return [f"--item: the parameters or inputs of {step_id} changed since its run: run it for every tilt series "
                "(an item run must match the run it is merged into)"]
    not_series = [name for name, rel in st.outputs.items() if Path(rel).name != SERIES_FILE]
    if not_series:
        return [f"--item: the outputs of {step_id} are not per tilt series ({', '.join(not_series)}): run it whole"]
    known: set[str] = set()
    for rel in st.outputs.values():
        sset, _ = SeriesSet.load(project.dir / rel)
        known |= set(sset.names())
    missing = sorted(set(items) - known)
    if missing:
        return [f"--item {', '.join(missing)}: no such tilt series in {step_id}'s results (it has: "
                f"{', '.join(sorted(known))})"]
    return []


def _filtered_series(src: Path, dst_dir: Path, items: Collection[str]) -> Path:
    """A copy of ``series.json`` at ``src`` in ``dst_dir`` that lists only ``items``, with their files linked."""
    sset, base = SeriesSet.load(src)
    kept = [s for s in sset.series if s.name in items]
    for s in kept:
        for role, rel in s.files.items():
            _link(s.path(role, base), dst_dir / rel)
    return SeriesSet(series=kept).save(dst_dir)


def _filtered_tilt_series(src: Path, dst_dir: Path, items: Collection[str]) -> Path:
    """A copy of the import's ``tilt_series.json`` listing only ``items``; ``dst_dir`` lies as deep below the project
    as ``src``'s folder, so its relative movie paths still lead to the movies."""
    raw = json.loads(src.read_text(encoding="utf-8"))
    raw["series"] = [s for s in raw.get("series", []) if isinstance(s, dict) and s.get("name") in items]
    dst_dir.mkdir(parents=True, exist_ok=True)
    out = dst_dir / TILT_SERIES_FILE
    out.write_text(json.dumps(raw, indent=1), encoding="utf-8")
    return out


def restrict_upstream(ctx: Any, step_dir: Path, stamp: str, items: Collection[str]) -> list[Path]:
    """Point ``ctx.upstream``'s series records at copies holding only ``items`` (see the module docstring); returns
    the folders made (remove them with :func:`remove_folders` after the run)."""
    from dataclasses import replace

    made: list[Path] = []
    for sid, outs in list(ctx.upstream.items()):
        new_outputs = dict(outs.outputs)
        for name, path in outs.outputs.items():
            p = Path(path)
            record = p if p.is_file() else p / SERIES_FILE
            if record.name not in SERIES_RECORDS or not record.is_file():
                continue
            folder = step_dir / f"run-{stamp}-items-{sid}-{name}.partial"
            made.append(folder)
            if record.name == SERIES_FILE:
                new_outputs[name] = _filtered_series(record, folder, items)
            else:
                new_outputs[name] = _filtered_tilt_series(record, folder, items)
        ctx.upstream[sid] = replace(outs, outputs=new_outputs)
    return made


def remove_folders(folders: list[Path]) -> None:
    for f in folders:
        if f.name.endswith(".partial") and "-items-" in f.name:
            shutil.rmtree(f, ignore_errors=True)


def merge_items(project: Any, step_id: str, result: Any, partial: Path, items: Collection[str]) -> None:
    """Complete the run in ``partial`` (made for ``items`` only) with the other series of the step's current run:
    their files linked, ``series.json`` merged in the previous order, ``result.metrics['series']`` merged."""
    st = project.data.steps[step_id]
    for name, rel in st.outputs.items():
        prev, prev_base = SeriesSet.load(project.dir / rel)
        new_path = Path(result.outputs[name])
        new, _ = SeriesSet.load(new_path)
        fresh = {s.name: s for s in new.series}
        merged = []
        for s in prev.series:
            if s.name in fresh:
                merged.append(fresh.pop(s.name))
                continue
            for role, f in s.files.items():
                target = guarded_path(new_path.parent, f)  # a tampered record cannot write outside the run
                if not target.exists():
                    _link(s.path(role, prev_base), target)
            merged.append(s)
        merged.extend(fresh.values())
        with contextlib.suppress(FileNotFoundError):
            (new_path.parent / SERIES_FILE).unlink()
        SeriesSet(series=merged).save(new_path.parent)
    per_series = result.metrics.get("series") if isinstance(result.metrics, dict) else None
    old = st.metrics.get("series") if isinstance(st.metrics, dict) else None
    if isinstance(per_series, dict) and isinstance(old, dict):
        result.metrics["series"] = {**{k: v for k, v in old.items() if k not in items}, **per_series}
    result.metrics["items_rerun"] = sorted(items)
    result.summary = f"{result.summary} (rerun for {', '.join(sorted(items))}; the other series kept)".strip()
