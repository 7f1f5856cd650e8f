"""The record that tilt-series steps pass on: ``series.json`` beside the stacks a step wrote.

Every step after the import writes one :class:`SeriesSet` (output name ``series``): per tilt series its name,
its stack (MRC, views in angle order, the geometry record's binning), optional companion files (even/odd
stacks, CTF STAR, masks, previews) and the geometry record, which carries the tilt angles, doses, optics and,
once aligned, the per-view transforms. File names are stored relative to the folder of ``series.json``, so a
project folder can be moved; :meth:`SeriesSet.load` turns them into absolute paths.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from tomoguide.geometry import TiltSeriesGeometry

SERIES_FILE = "series.json"


class SeriesEntry(BaseModel):
    """One tilt series as a step wrote it. ``files`` maps a role ("stack", "even", "odd", "ctf_star",
    "ctf_preview", "mask", ...) to a file name; ``flags`` holds per-view markers (e.g. ``ctf_failed``)."""

    name: str
    geometry: TiltSeriesGeometry
    files: dict[str, str] = Field(default_factory=dict)
    flags: dict[str, list[bool]] = Field(default_factory=dict)
    info: dict[str, Any] = Field(default_factory=dict)

    def path(self, role: str, base: Path) -> Path:
        if role not in self.files:
            raise KeyError(f"tilt series {self.name} has no {role!r} file (it has: {', '.join(self.files)})")
        return Path(base) / self.files[role]


class SeriesSet(BaseModel):
    """All tilt series of one step's output."""

    series: list[SeriesEntry]

    def save(self, folder: Path) -> Path:
        path = Path(folder) / SERIES_FILE
        path.write_text(self.model_dump_json(indent=1))
        return path

    @classmethod
    def load(cls, path: Path) -> tuple[SeriesSet, Path]:
        """Read ``series.json``; returns the set and the folder its file names are relative to."""
        path = Path(path)
        if path.is_dir():
            path = path / SERIES_FILE
        data = json.loads(path.read_text())
        return cls.model_validate(data), path.parent

    def names(self) -> list[str]:
        return [s.name for s in self.series]


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` (a step passing an unchanged stack on), or copy it across file systems."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def ctf_row(name: str, i: int, tilt_deg: float, fit: Any) -> dict[str, Any]:
    """One row of a per-tilt CTF STAR from a :class:`~tomoguide.compute.ctffit.CtfFit` (view ``i``, 0-based)."""
    return {"rlnMicrographName": f"{name}.mrc:{i + 1}", "rlnTomoNominalStageTiltAngle": tilt_deg,
            **fit.star_row(), "tomoguideCtfFailed": int(fit.failed), "tomoguideCtfReason": fit.reason or "-"}
