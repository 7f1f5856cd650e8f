"""RELION STAR files (RELION 4 and 5 tomography), read and written with ``starfile`` as pandas tables.

Every STAR file is a sequence of named data blocks (``data_NAME``); a block is either a loop (a table:
one :class:`pandas.DataFrame`) or a list of ``label value`` pairs (a ``dict``). :func:`read_star` always
returns ``{name: block}`` with the ``data_`` prefix removed (``data_`` alone gives the name ``""``).

Kinds of file handled here (RELION labels; units as RELION uses them):

* **tomograms** (``tomograms.star``, RELION 5): block ``global``, one row per tomogram. Required:
  ``rlnTomoName``, ``rlnVoltage`` (kV), ``rlnSphericalAberration`` (mm), ``rlnAmplitudeContrast``
  (fraction) and a pixel size (``rlnTomoTiltSeriesPixelSize`` or ``rlnMicrographOriginalPixelSize``, Å).
  RELION 5 also writes ``rlnTomoTiltSeriesStarFile``, ``rlnTomoHand`` (±1, defocus handedness),
  ``rlnMicrographOriginalPixelSize``, ``rlnTomoTiltSeriesPixelSize``, optionally ``rlnTomoSizeX/Y/Z``
  (unbinned tilt-series px), ``rlnTomoTomogramBinning``, ``rlnTomoReconstructedTomogram``. RELION 4
  variants are accepted too: the import ``tilt_series.star`` (optics block + ``global`` with
  ``rlnOpticsGroup``: optics values are merged into each row) and a WarpTools/RELION 4
  ``tomograms.star`` with one per-tilt block per tomogram (``rlnTomoProjX..W`` projection matrices).
* **tilt series** (RELION 5 per-tilt-series STAR, block named after the tomogram; RELION 4 import:
  block ``tilt_images``): one row per tilt image. Required: an image name (``rlnMicrographMovieName``,
  ``rlnMicrographName`` or ``rlnTomoTiltMovieFile``) and ``rlnTomoNominalStageTiltAngle`` (degrees).
  Usual further labels: ``rlnTomoNominalTiltAxisAngle`` (degrees, from the image Y axis as SerialEM),
  ``rlnMicrographPreExposure`` (e⁻/Å² before this tilt), ``rlnTomoNominalDefocus`` (µm, SerialEM target,
  negative = underfocus as SerialEM writes it), ``rlnDefocusU/V`` (Å, positive = underfocus),
  ``rlnDefocusAngle`` (degrees), ``rlnCtfMaxResolution`` (Å), ``rlnCtfFigureOfMerit``,
  ``rlnTomoXTilt/YTilt/ZRot`` (degrees), ``rlnTomoXShiftAngst/YShiftAngst`` (Å).
* **CTF** (per-tilt CTF results, as RELION's CtfFind job writes: optics + ``micrographs``): required
  ``rlnMicrographName``, ``rlnDefocusU``, ``rlnDefocusV`` (Å, positive = underfocus),
  ``rlnDefocusAngle`` (degrees); usually ``rlnCtfMaxResolution`` (Å) and ``rlnCtfFigureOfMerit``.
* **particles** (RELION 5: optics + ``particles``; optional ``general``): required ``rlnTomoName`` and
  coordinates, either ``rlnCenteredCoordinateX/Y/ZAngst`` (RELION 5: Å from the tomogram centre,
  centre = size/2 in tilt-series px, see :mod:`tomoguide.compute.io.coords`) or ``rlnCoordinateX/Y/Z``
  (RELION 4: px). Optional ``rlnAngleRot/Tilt/Psi``, ``rlnTomoSubtomogramRot/Tilt/Psi`` (degrees),
  ``rlnOriginX/Y/ZAngst`` (Å).
* **micrographs** (a motion-correction output: optics + ``micrographs`` without defocus) — read and
  described, no special reader.

Readers are strict by default: a missing required column raises
:class:`~tomoguide.compute.io.errors.FormatError` whose field is ``data_BLOCK/COLUMN``; with
``strict=False`` a :class:`~tomoguide.compute.io.errors.FormatWarning` is issued and the column is
filled with NaN. Writers validate the same columns (always strictly) and write atomically (temporary
file in the same folder, then ``os.replace``).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import starfile

from .errors import FormatError, problem

Block = pd.DataFrame | dict[str, Any]

# ---- label sets ---------------------------------------------------------------------------------------

TOMOGRAMS_REQUIRED = ("rlnTomoName", "rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast")
#: one of these pixel sizes (Å) must be present in a tomograms table
TOMOGRAMS_PIXEL_SIZE = ("rlnTomoTiltSeriesPixelSize", "rlnMicrographOriginalPixelSize")
#: the full set RELION 5 writes and :func:`write_tomograms_star` requires
TOMOGRAMS_RELION5 = (
    "rlnTomoName",
    "rlnTomoTiltSeriesStarFile",
    "rlnVoltage",
    "rlnSphericalAberration",
    "rlnAmplitudeContrast",
    "rlnMicrographOriginalPixelSize",
    "rlnTomoHand",
    "rlnTomoTiltSeriesPixelSize",
)
TILT_IMAGE_NAMES = ("rlnMicrographMovieName", "rlnMicrographName", "rlnTomoTiltMovieFile")
TILT_SERIES_REQUIRED = ("rlnTomoNominalStageTiltAngle",)
CTF_REQUIRED = ("rlnMicrographName", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle")
CTF_WRITE_REQUIRED = CTF_REQUIRED + (
    "rlnCtfMaxResolution",
    "rlnCtfFigureOfMerit",
    "rlnTomoNominalStageTiltAngle",
)
CENTERED_XYZ = ("rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst", "rlnCenteredCoordinateZAngst")
PIXEL_XYZ = ("rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ")
ANGLES = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
SUBTOMO_ANGLES = ("rlnTomoSubtomogramRot", "rlnTomoSubtomogramTilt", "rlnTomoSubtomogramPsi")
ORIGINS_A = ("rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst")

_NON_TABLE_BLOCKS = ("optics", "general", "global")

# ---- generic read/write -------------------------------------------------------------------------------


def read_star(path: str | PathLike[str], *, strict: bool = True) -> dict[str, Block]:
    """Read every data block of a STAR file: ``{block name without "data_": DataFrame | dict}``.

    Loops become DataFrames (numeric columns parsed as numbers, others as strings); label-value blocks
    become dicts. A file without any data block is an error (strict) or gives ``{}`` with a warning.
    Raises ``FileNotFoundError`` for a missing file and :class:`FormatError` for an unparsable one.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # starfile/pandas chatter is not a format problem
            blocks = starfile.read(p, always_dict=True)
    except Exception as exc:  # starfile raises assorted errors for broken files
        raise FormatError(p, None, f"not a readable STAR file ({type(exc).__name__}: {exc})") from exc
    if not blocks:
        problem(strict, p, None, "no data_ block found")
        return {}
    return {str(k): v for k, v in blocks.items()}


def write_star(
    path: str | PathLike[str],
    blocks: dict[str, Block],
    *,
    overwrite: bool = True,
    float_format: str = "%.6f",
) -> Path:
    """Write ``blocks`` (``{name: DataFrame | dict}``) as ``data_NAME`` blocks, atomically.

    The file is written to a temporary file in the same folder and renamed over ``path``
    (``os.replace``), so a reader never sees half a file. ``overwrite=False`` refuses an existing file
    (``FileExistsError``). Returns the path.
    """
    p = Path(path)
    if p.exists() and not overwrite:
        raise FileExistsError(f"{p}: exists and overwrite=False")
    if not blocks:
        raise ValueError("write_star: nothing to write (no blocks)")
    p.parent.mkdir(parents=True, exist_ok=True)
    data: dict[str, Block] = {}
    for name, block in blocks.items():
        if isinstance(block, pd.DataFrame):
            data[str(name)] = block.reset_index(drop=True)
        elif isinstance(block, dict):
            data[str(name)] = dict(block)
        else:
            raise TypeError(f"block {name!r}: expected a DataFrame or a dict, got {type(block).__name__}")
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    os.close(fd)
    try:
        starfile.write(data, tmp, float_format=float_format, overwrite=True)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return p


# ---- helpers ------------------------------------------------------------------------------------------


def _table(blocks: dict[str, Block], name: str) -> pd.DataFrame | None:
    """Block ``name`` as a DataFrame (a label-value block becomes one row), or None if absent."""
    block = blocks.get(name)
    if block is None:
        return None
    if isinstance(block, dict):
        return pd.DataFrame([block])
    return block


def _require(
    df: pd.DataFrame, columns: tuple[str, ...], path: Path, block: str, strict: bool
) -> pd.DataFrame:
    """Check ``columns``; missing ones raise (strict) or are warned about and filled with NaN."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        df = df.copy()
    for col in missing:
        problem(strict, path, f"data_{block}/{col}", "missing required column")
        df[col] = np.nan
    return df


def _require_one_of(
    df: pd.DataFrame, columns: tuple[str, ...], path: Path, block: str, strict: bool
) -> None:
    if not any(c in df.columns for c in columns):
        problem(strict, path, f"data_{block}/{columns[0]}", "missing column: need one of " + ", ".join(columns))


def _merge_optics(df: pd.DataFrame, optics: pd.DataFrame | None) -> pd.DataFrame:
    """Copy optics-group values into each row (by ``rlnOpticsGroup``), not replacing existing columns."""
    if optics is None or optics.empty:
        return df
    extra = [c for c in optics.columns if c not in df.columns]
    if not extra:
        return df
    if "rlnOpticsGroup" in df.columns and "rlnOpticsGroup" in optics.columns:
        lookup = optics.set_index("rlnOpticsGroup")
        out = df.copy()
        for c in extra:
            out[c] = df["rlnOpticsGroup"].map(lookup[c]).to_numpy()
        return out
    if len(optics) == 1:
        out = df.copy()
        for c in extra:
            out[c] = optics[c].iloc[0]
        return out
    return df


def _per_tilt_block(blocks: dict[str, Block], path: Path, strict: bool) -> tuple[str, pd.DataFrame]:
    """The per-row table of a file: the largest loop that is not optics/general/global."""
    candidates = [
        (k, v) for k, v in blocks.items() if isinstance(v, pd.DataFrame) and k not in _NON_TABLE_BLOCKS
    ]
    if not candidates:
        raise FormatError(path, None, "no per-tilt table (a loop other than optics/general/global)")
    if len(candidates) > 1:
        problem(
            strict,
            path,
            None,
            f"{len(candidates)} per-tilt tables ({', '.join(k for k, _ in candidates)}); using the largest",
        )
    return max(candidates, key=lambda kv: len(kv[1]))


# ---- tomograms ----------------------------------------------------------------------------------------


@dataclass
class TomogramsStar:
    """Contents of a ``tomograms.star``.

    ``tomograms``: the ``global`` table, one row per tomogram, optics values merged into each row.
    ``tilt_blocks``: per-tilt tables stored in the same file (RELION 4 / WarpTools style, keyed by block
    name = ``rlnTomoName``); empty for RELION 5, whose per-tilt tables are separate files named in
    ``rlnTomoTiltSeriesStarFile`` (relative to the project folder).
    ``missing_relion5``: labels of :data:`TOMOGRAMS_RELION5` absent from the table (informational).
    """

    path: Path
    tomograms: pd.DataFrame
    tilt_blocks: dict[str, pd.DataFrame] = field(default_factory=dict)
    missing_relion5: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [str(n) for n in self.tomograms["rlnTomoName"]]

    def pixel_size_A(self, name: str) -> float:
        """Tilt-series pixel size (Å) of tomogram ``name`` (falls back to the original pixel size)."""
        row = self.tomograms[self.tomograms["rlnTomoName"].astype(str) == name]
        if row.empty:
            raise KeyError(name)
        for col in TOMOGRAMS_PIXEL_SIZE:
            if col in row.columns and pd.notna(row[col].iloc[0]):
                return float(row[col].iloc[0])
        raise KeyError(f"{name}: no pixel size")


def read_tomograms_star(path: str | PathLike[str], *, strict: bool = True) -> TomogramsStar:
    """Read a RELION 5 ``tomograms.star`` (or a RELION 4 import/WarpTools variant, see module doc)."""
    p = Path(path)
    blocks = read_star(p, strict=strict)
    glob = _table(blocks, "global")
    if glob is None:
        problem(strict, p, "data_global", "missing block")
        glob = pd.DataFrame({c: pd.Series(dtype=float) for c in TOMOGRAMS_REQUIRED})
    optics = _table(blocks, "optics")
    glob = _merge_optics(glob, optics)
    glob = _require(glob, TOMOGRAMS_REQUIRED, p, "global", strict)
    _require_one_of(glob, TOMOGRAMS_PIXEL_SIZE, p, "global", strict)
    glob = glob.copy()
    glob["rlnTomoName"] = glob["rlnTomoName"].astype(str)
    names = set(glob["rlnTomoName"])
    tilt_blocks = {
        k: v for k, v in blocks.items() if isinstance(v, pd.DataFrame) and k in names
    }
    missing = [c for c in TOMOGRAMS_RELION5 if c not in glob.columns]
    return TomogramsStar(path=p, tomograms=glob, tilt_blocks=tilt_blocks, missing_relion5=missing)


def write_tomograms_star(
    path: str | PathLike[str],
    tomograms: pd.DataFrame,
    tilt_blocks: dict[str, pd.DataFrame] | None = None,
    *,
    overwrite: bool = True,
) -> Path:
    """Write a RELION 5 ``tomograms.star``: block ``global`` (+ optional per-tomogram blocks).

    ``tomograms`` must hold every label of :data:`TOMOGRAMS_RELION5`; extra columns are written as well.
    """
    _require(tomograms, TOMOGRAMS_RELION5, Path(path), "global", True)
    blocks: dict[str, Block] = {"global": tomograms}
    for name, df in (tilt_blocks or {}).items():
        blocks[str(name)] = df
    return write_star(path, blocks, overwrite=overwrite)


# ---- tilt series --------------------------------------------------------------------------------------


def read_tilt_series_star(path: str | PathLike[str], *, strict: bool = True) -> pd.DataFrame:
    """Read a per-tilt-series STAR: one row per tilt image (RELION 5 per-TS STAR, RELION 4 import).

    Returns the per-tilt table (optics values merged into each row where an optics block exists), in
    file order. The block name (RELION 5: the tomogram name) is in ``df.attrs["block"]``.
    Required: an image name (one of :data:`TILT_IMAGE_NAMES`) and ``rlnTomoNominalStageTiltAngle``.
    """
    p = Path(path)
    blocks = read_star(p, strict=strict)
    name, df = _per_tilt_block(blocks, p, strict)
    _require_one_of(df, TILT_IMAGE_NAMES, p, name, strict)
    df = _require(df, TILT_SERIES_REQUIRED, p, name, strict)
    df = _merge_optics(df, _table(blocks, "optics"))
    df = df.reset_index(drop=True)
    df.attrs["block"] = name
    return df


def write_tilt_series_star(
    path: str | PathLike[str], tilts: pd.DataFrame, *, tomo_name: str, overwrite: bool = True
) -> Path:
    """Write a RELION 5 per-tilt-series STAR (one block named ``tomo_name``, one row per tilt).

    ``tilts`` needs an image name column (:data:`TILT_IMAGE_NAMES`) and ``rlnTomoNominalStageTiltAngle``.
    """
    p = Path(path)
    if not any(c in tilts.columns for c in TILT_IMAGE_NAMES):
        raise FormatError(p, f"data_{tomo_name}/{TILT_IMAGE_NAMES[0]}", "missing column: need one of " + ", ".join(TILT_IMAGE_NAMES))
    _require(tilts, TILT_SERIES_REQUIRED, p, tomo_name, True)
    return write_star(p, {tomo_name: tilts}, overwrite=overwrite)


# ---- CTF ----------------------------------------------------------------------------------------------


def read_ctf_star(path: str | PathLike[str], *, strict: bool = True) -> pd.DataFrame:
    """Read per-tilt CTF results (RELION CtfFind output or :func:`write_ctf_star`): one row per image.

    Defocus ``rlnDefocusU/V`` in Å (positive = underfocus), ``rlnDefocusAngle`` in degrees. Optics
    values are merged into each row.
    """
    p = Path(path)
    blocks = read_star(p, strict=strict)
    name, df = _per_tilt_block(blocks, p, strict)
    df = _require(df, CTF_REQUIRED, p, name, strict)
    df = _merge_optics(df, _table(blocks, "optics")).reset_index(drop=True)
    df.attrs["block"] = name
    return df


def write_ctf_star(
    path: str | PathLike[str],
    rows: pd.DataFrame,
    *,
    optics: dict[str, Any] | None = None,
    overwrite: bool = True,
) -> Path:
    """Write per-tilt CTF results: optional ``optics`` block + ``micrographs`` table.

    ``rows`` must have :data:`CTF_WRITE_REQUIRED`: ``rlnMicrographName``, ``rlnDefocusU``,
    ``rlnDefocusV`` (Å, positive = underfocus), ``rlnDefocusAngle`` (degrees), ``rlnCtfMaxResolution``
    (Å), ``rlnCtfFigureOfMerit`` and ``rlnTomoNominalStageTiltAngle`` (degrees).
    """
    p = Path(path)
    _require(rows, CTF_WRITE_REQUIRED, p, "micrographs", True)
    blocks: dict[str, Block] = {}
    if optics:
        blocks["optics"] = _optics_frame(optics)
    blocks["micrographs"] = rows
    return write_star(p, blocks, overwrite=overwrite)


# ---- particles ----------------------------------------------------------------------------------------


@dataclass
class ParticlesStar:
    """Contents of a RELION tomography particles STAR.

    ``particles``: one row per particle (optics values *not* merged; join on ``rlnOpticsGroup``).
    ``optics``: the optics table or None. ``general``: the ``general`` block or None.
    ``relion_version``: 5 when centred Å coordinates are present, else 4 (pixel coordinates).
    """

    path: Path
    particles: pd.DataFrame
    optics: pd.DataFrame | None
    general: dict[str, Any] | None
    relion_version: int

    def pixel_size_A(self) -> float | None:
        """Tilt-series pixel size from the optics table (first group), if any."""
        if self.optics is None:
            return None
        for col in ("rlnTomoTiltSeriesPixelSize", "rlnMicrographOriginalPixelSize", "rlnImagePixelSize"):
            if col in self.optics.columns:
                return float(self.optics[col].iloc[0])
        return None


def read_particles_star(path: str | PathLike[str], *, strict: bool = True) -> ParticlesStar:
    """Read a RELION 5 (or 4) tomography particles STAR (see module doc for the labels)."""
    p = Path(path)
    blocks = read_star(p, strict=strict)
    if "particles" in blocks:
        name, df = "particles", _table(blocks, "particles")
    else:
        name, df = _per_tilt_block(blocks, p, strict)
    assert df is not None
    has_centered = all(c in df.columns for c in CENTERED_XYZ)
    has_pixels = all(c in df.columns for c in PIXEL_XYZ)
    if not (has_centered or has_pixels):
        problem(
            strict,
            p,
            f"data_{name}/{CENTERED_XYZ[0]}",
            "missing coordinates: need rlnCenteredCoordinateX/Y/ZAngst (RELION 5) or rlnCoordinateX/Y/Z",
        )
        df = df.copy()
        for col in CENTERED_XYZ:
            df[col] = np.nan
        has_centered = True
    if "rlnTomoName" not in df.columns and "rlnMicrographName" in df.columns:
        df = df.copy()
        df["rlnTomoName"] = [Path(str(m)).stem for m in df["rlnMicrographName"]]
    df = _require(df, ("rlnTomoName",), p, name, strict)
    df = df.reset_index(drop=True)
    df["rlnTomoName"] = df["rlnTomoName"].astype(str)
    general = blocks.get("general")
    if isinstance(general, pd.DataFrame):
        general = general.iloc[0].to_dict() if len(general) else None
    return ParticlesStar(
        path=p,
        particles=df,
        optics=_table(blocks, "optics"),
        general=general,
        relion_version=5 if has_centered else 4,
    )


def _optics_frame(optics: dict[str, Any] | pd.DataFrame) -> pd.DataFrame:
    if isinstance(optics, pd.DataFrame):
        return optics
    values = {k: (list(v) if isinstance(v, (list, tuple, np.ndarray)) else [v]) for k, v in optics.items()}
    return pd.DataFrame(values)


def write_particles_star(
    path: str | PathLike[str],
    particles: pd.DataFrame,
    optics: dict[str, Any] | pd.DataFrame,
    *,
    general: dict[str, Any] | None = None,
    overwrite: bool = True,
) -> Path:
    """Write a RELION 5 particles STAR: ``[general]``, ``optics``, ``particles``.

    ``particles`` needs ``rlnTomoName`` and ``rlnCenteredCoordinateX/Y/ZAngst`` (Å from the tomogram
    centre) or ``rlnCoordinateX/Y/Z``; ``optics`` is one optics group as ``{label: value}`` (or lists of
    values for several groups, or a DataFrame) and must give ``rlnTomoTiltSeriesPixelSize`` (Å) as
    RELION 5 needs it. ``rlnOpticsGroup`` (1) is added to the particles and the optics when absent.
    """
    p = Path(path)
    _require(particles, ("rlnTomoName",), p, "particles", True)
    if not (all(c in particles.columns for c in CENTERED_XYZ) or all(c in particles.columns for c in PIXEL_XYZ)):
        raise FormatError(p, f"data_particles/{CENTERED_XYZ[0]}", "missing coordinates")
    opt = _optics_frame(optics).copy()
    _require(opt, ("rlnTomoTiltSeriesPixelSize",), p, "optics", True)
    if "rlnOpticsGroup" not in opt.columns:
        opt.insert(0, "rlnOpticsGroup", np.arange(1, len(opt) + 1))
    if "rlnOpticsGroupName" not in opt.columns:
        opt.insert(0, "rlnOpticsGroupName", [f"opticsGroup{g}" for g in opt["rlnOpticsGroup"]])
    parts = particles
    if "rlnOpticsGroup" not in parts.columns:
        parts = parts.copy()
        parts["rlnOpticsGroup"] = int(opt["rlnOpticsGroup"].iloc[0])
    blocks: dict[str, Block] = {}
    if general:
        blocks["general"] = general
    blocks["optics"] = opt
    blocks["particles"] = parts
    return write_star(p, blocks, overwrite=overwrite)


# ---- describe -----------------------------------------------------------------------------------------


def _rng(values: pd.Series) -> list[float] | None:
    v = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return None
    return [float(v.min()), float(v.max())]


def _kind(blocks: dict[str, Block]) -> str:
    cols: set[str] = set()
    for v in blocks.values():
        cols |= set(v.columns if isinstance(v, pd.DataFrame) else v.keys())
    if {"rlnTomoParticlesFile", "rlnTomoTomogramsFile"} & cols and "rlnTomoName" not in cols:
        return "optimisation_set"
    if "global" in blocks and "rlnTomoName" in cols and not (set(CENTERED_XYZ) <= cols or set(PIXEL_XYZ) <= cols):
        return "tomograms"
    if "rlnTomoName" in cols and (set(CENTERED_XYZ) <= cols or set(PIXEL_XYZ) <= cols):
        return "particles"
    if "rlnTomoNominalStageTiltAngle" in cols:
        return "tilt_series"
    if set(CTF_REQUIRED) <= cols:
        return "ctf"
    if "rlnMicrographName" in cols:
        return "micrographs"
    return "unknown"


def _tilt_facts(df: pd.DataFrame) -> dict[str, Any]:
    facts: dict[str, Any] = {"n_tilts": int(len(df))}
    if "rlnTomoNominalStageTiltAngle" in df.columns:
        facts["tilt_range_deg"] = _rng(df["rlnTomoNominalStageTiltAngle"])
    if "rlnTomoNominalTiltAxisAngle" in df.columns:
        facts["tilt_axis_deg"] = float(pd.to_numeric(df["rlnTomoNominalTiltAxisAngle"]).median())
    if "rlnMicrographPreExposure" in df.columns:
        pre = np.sort(pd.to_numeric(df["rlnMicrographPreExposure"]).to_numpy(dtype=float))
        facts["pre_exposure_range_e_per_A2"] = [float(pre[0]), float(pre[-1])]
        if pre.size > 1:
            facts["dose_per_tilt_e_per_A2"] = float(np.median(np.diff(pre)))
    facts.update(_defocus_facts(df))
    if "rlnTomoNominalDefocus" in df.columns:
        facts["nominal_defocus_um"] = _rng(df["rlnTomoNominalDefocus"])
    return facts


def _defocus_facts(df: pd.DataFrame) -> dict[str, Any]:
    facts: dict[str, Any] = {}
    if "rlnDefocusU" in df.columns and "rlnDefocusV" in df.columns:
        u = pd.to_numeric(df["rlnDefocusU"]).to_numpy(dtype=float)
        v = pd.to_numeric(df["rlnDefocusV"]).to_numpy(dtype=float)
        mean = (u + v) / 2
        facts["defocus_range_A"] = [float(np.nanmin(mean)), float(np.nanmax(mean))]
        facts["defocus_median_A"] = float(np.nanmedian(mean))
        facts["astigmatism_max_A"] = float(np.nanmax(np.abs(u - v)))
    if "rlnCtfMaxResolution" in df.columns:
        facts["ctf_max_resolution_range_A"] = _rng(df["rlnCtfMaxResolution"])
    return facts


def describe(path: str | PathLike[str]) -> dict[str, Any]:
    """Summary of any STAR file: blocks (rows, columns) and, for known kinds, the facts.

    Returns ``{"path", "kind", "blocks": {name: {"type": "loop"|"pairs", "rows", "columns"}}, "facts"}``
    where ``kind`` is ``tomograms``, ``tilt_series``, ``ctf``, ``particles``, ``micrographs``,
    ``optimisation_set`` (RELION 5: the particles and tomograms files it names) or ``unknown`` and ``facts`` holds e.g. ``n_tilts``, ``tilt_range_deg``, ``dose_per_tilt_e_per_A2``,
    ``defocus_range_A`` (mean of U and V, Å), ``n_particles``, ``tomograms`` ({name: count}).
    """
    p = Path(path)
    blocks = read_star(p, strict=False)
    info: dict[str, Any] = {"path": str(p), "blocks": {}, "facts": {}}
    for name, block in blocks.items():
        if isinstance(block, pd.DataFrame):
            info["blocks"][name] = {"type": "loop", "rows": int(len(block)), "columns": list(block.columns)}
        else:
            info["blocks"][name] = {"type": "pairs", "rows": 1, "columns": list(block.keys())}
    kind = _kind(blocks)
    info["kind"] = kind
    facts: dict[str, Any] = info["facts"]
    if kind == "tomograms":
        glob = _merge_optics(_table(blocks, "global"), _table(blocks, "optics"))  # type: ignore[arg-type]
        facts["n_tomograms"] = int(len(glob))
        facts["tomograms"] = [str(n) for n in glob["rlnTomoName"]]
        for col in TOMOGRAMS_PIXEL_SIZE:
            if col in glob.columns:
                facts["pixel_size_A"] = _rng(glob[col])
                break
        if all(c in glob.columns for c in ("rlnTomoSizeX", "rlnTomoSizeY", "rlnTomoSizeZ")):
            facts["sizes_px"] = glob[["rlnTomoSizeX", "rlnTomoSizeY", "rlnTomoSizeZ"]].astype(int).values.tolist()
        per_tomo = {k: v for k, v in blocks.items() if isinstance(v, pd.DataFrame) and k in set(facts["tomograms"])}
        if per_tomo:
            facts["n_tilts"] = {k: int(len(v)) for k, v in per_tomo.items()}
    elif kind in ("tilt_series", "ctf", "micrographs"):
        _, df = _per_tilt_block(blocks, p, False)
        if kind == "ctf":
            facts["n_tilts"] = int(len(df))
            facts.update(_defocus_facts(df))
        elif kind == "tilt_series":
            facts.update(_tilt_facts(df))
        else:
            facts["n_micrographs"] = int(len(df))
            if "rlnAccumMotionTotal" in df.columns:
                facts["motion_total_range_A"] = _rng(df["rlnAccumMotionTotal"])
        optics = _table(blocks, "optics")
        if optics is not None:
            for col in ("rlnMicrographPixelSize", "rlnMicrographOriginalPixelSize"):
                if col in optics.columns:
                    facts["pixel_size_A"] = float(optics[col].iloc[0])
                    break
    elif kind == "particles":
        df = blocks["particles"] if "particles" in blocks else _per_tilt_block(blocks, p, False)[1]
        assert isinstance(df, pd.DataFrame)
        facts["n_particles"] = int(len(df))
        counts = df["rlnTomoName"].astype(str).value_counts(sort=False)
        facts["tomograms"] = {str(k): int(v) for k, v in counts.items()}
        general = blocks.get("general")
        relion5 = all(c in df.columns for c in CENTERED_XYZ) or (
            general is not None and not isinstance(general, pd.DataFrame) and "rlnTomoSubTomosAre2DStacks" in general)
        facts["relion_version"] = 5 if relion5 else 4
    elif kind == "optimisation_set":
        for key, col in (("particles_file", "rlnTomoParticlesFile"), ("tomograms_file", "rlnTomoTomogramsFile"),
                         ("trajectories_file", "rlnTomoTrajectoriesFile"), ("manifolds_file", "rlnTomoManifoldsFile"),
                         ("reference_map_1", "rlnTomoReferenceMap1File"), ("reference_map_2", "rlnTomoReferenceMap2File"),
                         ("mask_file", "rlnTomoReferenceMaskFile")):
            for block in blocks.values():
                value = block[col].iloc[0] if isinstance(block, pd.DataFrame) and col in block.columns and len(block) \
                    else (block.get(col) if isinstance(block, dict) else None)
                if value is not None:
                    facts[key] = str(value)
                    break
    return info
