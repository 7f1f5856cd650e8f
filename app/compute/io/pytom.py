"""PyTom / TOM fiducial marker files: the positions of gold markers clicked in each tilt of a series.

Two layouts (PyTom's ``TiltAlignmentStructures.TiltSeries.readMarkerFile`` / ``txt2markerfile``):

* **Text** (``.txt``, PyTom ≥ 0.99 GUI): header lines starting with ``#`` naming the columns
  ``MarkerIndex``, ``TiltAngle (degrees)``, ``PositionX (px)``, ``PositionY (px)``, then one row per marker
  and tilt, ``%3d %8.3f %8.2f %8.2f``, grouped by marker (all tilts of marker 0, then marker 1, ...),
  markers numbered from 0, the tilts of each marker in the same order.
* **EM** (``.em``, TOM toolbox and older PyTom): a TOM ``.em`` volume of size ``(k, n_tilts, n_markers)``
  (x, y, z) with ``k`` = 10 or 12 values per tilt and marker: ``[0]`` tilt angle (degrees), ``[1]`` x,
  ``[2]`` y (px), then TOM's alignment fields (deviation, shifts, magnification, rotation). Read with
  :func:`tomoguide.compute.io.em.read_em`, whose ``[z, y, x]`` array is ``[marker, tilt, value]``.

A marker not clicked in a tilt has x and y ``-1`` (TOM's convention); any negative coordinate is read as
missing (NaN). Positions are in pixels of the projections the markers were clicked on, as written (TOM's
MATLAB coordinates count from 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from tomoguide.compute.io import em
from tomoguide.compute.io.errors import FormatError, problem

__all__ = ["PytomMarkers", "describe", "read_pytom_markers", "write_pytom_markers_txt"]

PathType = str | PathLike[str]

_TEXT_COLUMNS = ("MarkerIndex", "TiltAngle", "PositionX", "PositionY")


@dataclass
class PytomMarkers:
    """Marker positions of one tilt series.

    Attributes:
        path: the file. flavour: "PyTom marker text" or "TOM/PyTom marker .em (k values)".
        tilt_deg: (n_tilts,) tilt angle of each tilt, degrees (from the first marker's rows).
        xy_px: (n_markers, n_tilts, 2) float64 marker positions in px, NaN where the marker was not clicked.
    """

    path: Path
    flavour: str
    tilt_deg: np.ndarray
    xy_px: np.ndarray

    @property
    def n_markers(self) -> int:
        return int(self.xy_px.shape[0])

    @property
    def n_tilts(self) -> int:
        return int(self.xy_px.shape[1])

    def per_tilt(self) -> list[np.ndarray]:
        """For each tilt, the (m, 2) positions of the markers clicked in it (missing ones left out)."""
        return [self.xy_px[:, t][np.isfinite(self.xy_px[:, t]).all(axis=1)] for t in range(self.n_tilts)]


def _missing(xy: np.ndarray) -> np.ndarray:
    out = xy.astype(np.float64).copy()
    out[(out < 0).any(axis=-1)] = np.nan
    return out


def _read_text(p: Path, strict: bool) -> PytomMarkers:
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise FormatError(p, f"byte {err.start}", "not a text marker file") from err
    header = " ".join(line.lstrip("#").strip() for line in text.splitlines() if line.startswith("#"))
    if not all(name in header for name in _TEXT_COLUMNS):
        raise FormatError(p, "header", "no '# MarkerIndex / TiltAngle / PositionX / PositionY' header lines: not a "
                          "PyTom marker text file")
    rows: list[list[float]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        parts = s.split()
        try:
            values = [float(v) for v in parts]
        except ValueError:
            problem(strict, p, f"line {lineno}", f"expected 4 numbers (MarkerIndex TiltAngle PositionX PositionY), "
                    f"got {s!r}")
            continue
        if len(values) != 4 or not np.all(np.isfinite(values)):
            problem(strict, p, f"line {lineno}", f"expected 4 finite numbers, got {s!r}")
            continue
        rows.append(values)
    if not rows:
        raise FormatError(p, "values", "no marker rows (an empty file, or cut short?)")
    table = np.asarray(rows)
    ids = table[:, 0]
    if np.any(ids != np.round(ids)) or ids.min() < 0 or ids.max() > 1_000_000:
        raise FormatError(p, "MarkerIndex", "marker indices must be integers from 0")
    uniq, counts = np.unique(ids.astype(np.int64), return_counts=True)
    if not np.array_equal(uniq, np.arange(uniq.size)):
        raise FormatError(p, "MarkerIndex", f"markers {uniq.tolist()[:8]}...: expected 0, 1, 2, ... without gaps")
    if np.any(counts != counts[0]):
        bad = int(uniq[np.flatnonzero(counts != counts[0])[0]])
        raise FormatError(p, "MarkerIndex", f"marker {bad} has {int(counts[uniq == bad][0])} rows, marker 0 has "
                          f"{int(counts[0])}: every marker needs one row per tilt (cut short?)")
    if np.any(np.diff(ids) < 0):
        raise FormatError(p, "MarkerIndex", "rows are not grouped by marker (0, 0, ..., 1, 1, ...)")
    n_markers, n_tilts = uniq.size, int(counts[0])
    cube = table.reshape(n_markers, n_tilts, 4)
    tilts = cube[0, :, 1]
    if np.any(np.abs(cube[:, :, 1] - tilts[None, :]) > 0.01):
        problem(strict, p, "TiltAngle", "the markers list different tilt angles for the same tilt")
    return PytomMarkers(p, "PyTom marker text", tilts.copy(), _missing(cube[:, :, 2:4]))


def read_pytom_markers(path: PathType, *, strict: bool = True) -> PytomMarkers:
    """Read a PyTom/TOM marker file, text (``.txt``) or EM (``.em``): see the module docstring.

    Raises:
        FormatError: naming the file and field: no PyTom header (text), rows not one per marker and tilt,
            an ``.em`` volume with fewer than 3 values per tilt, tilt angles outside ±90°.
    """
    p = Path(path)
    with p.open("rb") as fh:
        first = fh.read(4)
    if p.suffix.lower() == ".em" or (len(first) == 4 and first[0] in (0, 3, 5, 6) and first[3] in em.EM_DTYPES
                                     and not first.startswith(b"#")):
        f = em.read_em(p, strict=strict)
        if np.iscomplexobj(f.data):
            raise FormatError(p, "data type", "complex values: not a marker file")
        n_markers, n_tilts, k = f.data.shape
        if k < 3:
            raise FormatError(p, "dimensions", f"{k} values per tilt and marker (nx): a marker file holds at least "
                              "tilt angle, x and y")
        d = f.data.astype(np.float64)
        markers = PytomMarkers(p, f"TOM/PyTom marker .em ({k} values)", d[0, :, 0].copy(), _missing(d[:, :, 1:3]))
    else:
        markers = _read_text(p, strict)
    if np.any(np.abs(markers.tilt_deg) > 90):
        problem(strict, p, "TiltAngle", f"tilt angle {markers.tilt_deg[np.abs(markers.tilt_deg) > 90][0]:g}° is "
                "outside ±90°")
    return markers


def write_pytom_markers_txt(path: PathType, tilt_deg: Any, xy_px: Any) -> Path:
    """Write PyTom's text marker file (header and ``%3d %8.3f %8.2f %8.2f`` rows grouped by marker) for
    ``tilt_deg`` (n_tilts,) and ``xy_px`` (n_markers, n_tilts, 2); NaN positions are written as -1."""
    tilts = np.asarray(tilt_deg, dtype=np.float64)
    xy = np.asarray(xy_px, dtype=np.float64)
    if xy.ndim != 3 or xy.shape[2] != 2 or xy.shape[1] != tilts.size:
        raise ValueError(f"xy_px must be (n_markers, {tilts.size}, 2), got {xy.shape}")
    xy = np.where(np.isfinite(xy), xy, -1.0)
    lines = ["#MarkerIndex ", "#TiltAngle (degrees)", "#PositionX (px)", "#PositionY (px)"]
    for m in range(xy.shape[0]):
        for t in range(tilts.size):
            lines.append("%3d %8.3f %8.2f %8.2f" % (m, tilts[t], xy[m, t, 0], xy[m, t, 1]))
    p = Path(path)
    p.write_text("\n".join(lines) + "\n")
    return p


def describe(path: PathType, *, strict: bool = True) -> dict[str, Any]:
    """Facts for ``tomoguide inspect``: flavour, markers, tilts, how many positions were clicked."""
    m = read_pytom_markers(path, strict=strict)
    clicked = np.isfinite(m.xy_px).all(axis=-1)
    return {
        "kind": "pytom_markers", "flavour": m.flavour, "n_markers": m.n_markers, "n_tilts": m.n_tilts,
        "tilt_range_deg": [float(m.tilt_deg.min()), float(m.tilt_deg.max())],
        "n_positions": int(clicked.sum()), "n_missing": int((~clicked).sum()),
    }
