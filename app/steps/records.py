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


CTF_PREVIEW_PX = 256


def ctf_preview(spectrum: Any, fit: Any) -> Any:
    """The wizard's CTF image of one tilt: data | fitted rings (:func:`~tomoguide.compute.ctffit.ctf_rings_overlay`),
    Fourier-cropped to at most :data:`CTF_PREVIEW_PX` px, float32."""
    import numpy as np

    from tomoguide.compute.ctffit import ctf_rings_overlay
    from tomoguide.compute.rescale import fourier_crop

    box = int(getattr(spectrum, "box", 0) or np.asarray(spectrum).shape[0])
    overlay = ctf_rings_overlay(spectrum, fit, display_px=CTF_PREVIEW_PX if box > CTF_PREVIEW_PX else None)
    if overlay.shape[0] > CTF_PREVIEW_PX:
        overlay = fourier_crop(overlay, (CTF_PREVIEW_PX, CTF_PREVIEW_PX))
    return np.asarray(overlay, dtype=np.float32)


def write_ctf_results(folder: Path, name: str, rows: list[dict[str, Any]], previews: list[Any], optics: Any,
                      pixel_size_A: float) -> dict[str, str]:
    """Write one series' per-tilt CTF STAR and preview stack into ``folder``; returns their roles and file names
    (``ctf_star``, ``ctf_preview``), as :class:`SeriesEntry` stores them."""
    import numpy as np
    import pandas as pd

    from tomoguide.compute.io.mrc import write_mrc
    from tomoguide.compute.io.star import write_ctf_star

    files = {"ctf_star": f"{name}_ctf.star", "ctf_preview": f"{name}_ctf_preview.mrc"}
    write_ctf_star(Path(folder) / files["ctf_star"], pd.DataFrame(rows),
                   optics={"rlnVoltage": optics.voltage_kV, "rlnSphericalAberration": optics.cs_mm,
                           "rlnAmplitudeContrast": optics.amplitude_contrast, "rlnMicrographPixelSize": pixel_size_A})
    write_mrc(Path(folder) / files["ctf_preview"], np.stack(previews), voxel_size_A=1.0, is_stack=True)
    return files


def ctf_summary(rows: list[dict[str, Any]], failed: list[bool]) -> dict[str, Any]:
    """Metrics of one series' CTF fits: failed count, defocus range (µm) and median fit resolution (Å) of the rest."""
    import numpy as np

    ok = [r for r, f in zip(rows, failed) if not f]
    return {"n_failed": int(sum(failed)),
            "defocus_range_um": [min(r["rlnDefocusU"] for r in ok) / 1e4, max(r["rlnDefocusU"] for r in ok) / 1e4]
            if ok else None,
            "median_fit_resolution_A": float(np.median([r["rlnCtfMaxResolution"] for r in ok])) if ok else None}
