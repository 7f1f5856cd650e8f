"""Records of the subtomogram-averaging steps (``extract`` … ``refine_fine``): what they write and the pages read.

Two JSON records, each next to the files it names (paths relative to the record's folder):

* :class:`ParticleStack` (``particles.json``, output ``particles`` of ``extract`` / ``extract_fine``): the
  pseudo-subtomograms of every particle, ``subtomos/<TS>_<nnnnnn>_data.mrc`` (B, B, B) float32 real space,
  centre ``B // 2``, and ``…_weights.mrc`` (B, B, B) float32 CTF²·dose² weights on the *centred* Fourier grid
  (zero frequency at ``B // 2``, the missing wedge where 0); ``particles.star`` (RELION 5 blocks ``optics`` and
  ``particles``: rlnTomoName, rlnTomoParticleName, rlnCenteredCoordinateX/Y/ZAngst, rlnAngleRot/Tilt/Psi,
  rlnOriginX/Y/ZAngst, rlnRandomSubset, rlnImageName, rlnCtfImage); ``gallery.mrc`` (m, B, B) float32: each
  pseudo-subtomogram averaged over its central slab (±¼ box) along z, low-passed, for display.
* :class:`AverageRecord` (``average.json``, output ``average`` of ``initial_model``, ``refine``,
  ``reconstruct_particle`` and ``refine_fine``): maps ``map.mrc`` (merged, FSC-weighted and low-passed to the
  resolution), ``half1.mrc``/``half2.mrc`` (unfiltered half maps; absent for the initial model), ``mask.mrc``;
  the FSC curves; ``particles.star`` with the poses; the per-iteration history.

Conventions: maps (B, B, B) numpy order (z, y, x), centre ``B // 2``, voxel size in the MRC header and in
``voxel_A``; orientations RELION ZYZ Euler angles (:mod:`tomoguide.compute.euler`), ``x_tomogram = R x_ref + t``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, Field, field_validator

from tomoguide.integrity import check_name, check_relative_file, guarded_path
from tomoguide.steps.records import load_record, resolve_in, write_record


def _load(cls: Any, path: Path, file_name: str) -> tuple[Any, Path]:
    """A record from its JSON file (or the folder holding ``file_name``), validated by the one record loader
    (:func:`tomoguide.steps.records.load_record`: ``FILE: field: problem`` on any damage); returns it and its
    folder."""
    return load_record(cls, path, file_name)


def _save(model: BaseModel, path: Path) -> Path:
    return write_record(model, path)


def _positive_finite(v: float, what: str) -> float:
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{what} must be a positive finite number (got {v})")
    return v


class ExtractionInfo(BaseModel):
    """The entries of :attr:`ParticleStack.info` that the averaging steps read, checked when a record is loaded
    (other entries pass as they are): ``box_before_crop_px`` (the box of the sub-tilts before the crop),
    ``views_used`` (per tomogram the view indices the particles use), ``view_matrices`` (per tomogram one 3×3
    matrix per view) and ``uncropped_subtilts`` (per particle the relative names of its uncropped sub-tilt and
    weight stacks)."""

    box_before_crop_px: int | None = Field(None, ge=2, le=8192, strict=True)
    views_used: dict[str, list[Annotated[int, Field(ge=0, strict=True)]]] | None = None
    view_matrices: dict[str, list[list[list[float]]]] | None = None
    uncropped_subtilts: list[tuple[str, str]] | None = None

    @field_validator("uncropped_subtilts")
    @classmethod
    def _names(cls, v: list[tuple[str, str]] | None) -> list[tuple[str, str]] | None:
        for a, b in v or []:
            check_relative_file(a, "sub-tilt file name")
            check_relative_file(b, "sub-tilt weight file name")
        return v

    @field_validator("view_matrices")
    @classmethod
    def _matrices(cls, v: dict[str, list[list[list[float]]]] | None) -> dict[str, list[list[list[float]]]] | None:
        for name, mats in (v or {}).items():
            if any(len(m) != 3 or any(len(r) != 3 or not all(math.isfinite(x) for x in r) for r in m) for m in mats):
                raise ValueError(f"{name}: every view matrix must be 3×3 finite numbers")
        return v


class ParticleStack(BaseModel):
    """Extracted pseudo-subtomograms (see the module docstring)."""

    voxel_A: float
    box_px: int
    binning: float
    n_particles: int
    tomo_names: list[str]
    star: str = "particles.star"
    gallery: str = "gallery.mrc"
    dimensionality: int = 3
    info: dict[str, Any] = Field(default_factory=dict)

    @field_validator("voxel_A", "binning")
    @classmethod
    def _positive(cls, v: float, info: Any) -> float:
        return _positive_finite(v, info.field_name)

    @field_validator("box_px")
    @classmethod
    def _box(cls, v: int) -> int:
        if not 2 <= v <= 4096:
            raise ValueError(f"box of {v} px is not between 2 and 4096")
        return v

    @field_validator("n_particles")
    @classmethod
    def _count(cls, v: int) -> int:
        if v < 0:
            raise ValueError(f"negative particle count {v}")
        return v

    @field_validator("dimensionality")
    @classmethod
    def _dim(cls, v: int) -> int:
        if v not in (2, 3):
            raise ValueError(f"dimensionality {v} is neither 2 nor 3")
        return v

    @field_validator("tomo_names")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        return [check_name(n, "tomogram name") for n in v]

    @field_validator("info")
    @classmethod
    def _info(cls, v: dict[str, Any]) -> dict[str, Any]:
        known = {k: v[k] for k in ExtractionInfo.model_fields if k in v}
        ExtractionInfo.model_validate(known)  # raises naming the entry
        return v

    @field_validator("star", "gallery")
    @classmethod
    def _files(cls, v: str, info: Any) -> str:
        return check_relative_file(v, f"{info.field_name} file name")

    def path(self, field: str, base: Path) -> Path:
        """The file named by ``star`` or ``gallery``, inside the record's folder ``base``."""
        return resolve_in(base, getattr(self, field), field)

    def save(self, folder: Path) -> Path:
        return _save(self, guarded_path(Path(folder), "particles.json"))

    @classmethod
    def load(cls, path: Path) -> tuple[ParticleStack, Path]:
        """From ``particles.json`` (or its folder); returns the record and its folder."""
        return _load(cls, path, "particles.json")


class FSCCurve(BaseModel):
    """FSC between half maps against spatial frequency (Å⁻¹); ``resolution_A`` where the chosen curve crosses
    the threshold (0.143)."""

    freq_per_A: list[float]
    fsc_unmasked: list[float]
    fsc_masked: list[float]
    fsc_corrected: list[float] = Field(default_factory=list)
    threshold: float = 0.143
    resolution_A: float
    fsc_vs_reference: list[float] = Field(default_factory=list)


class AverageRecord(BaseModel):
    """A map with its halves, mask, FSC and poses (see the module docstring)."""

    voxel_A: float
    box_px: int
    symmetry: str
    resolution_A: float | None = None
    map: str = "map.mrc"
    half1: str | None = "half1.mrc"
    half2: str | None = "half2.mrc"
    mask: str | None = "mask.mrc"
    particles: str = "particles.star"
    fsc: FSCCurve | None = None
    history: list[dict[str, Any]] = Field(default_factory=list)
    info: dict[str, Any] = Field(default_factory=dict)

    @field_validator("voxel_A")
    @classmethod
    def _voxel(cls, v: float) -> float:
        return _positive_finite(v, "voxel_A")

    @field_validator("box_px")
    @classmethod
    def _box(cls, v: int) -> int:
        if not 2 <= v <= 4096:
            raise ValueError(f"box of {v} px is not between 2 and 4096")
        return v

    @field_validator("resolution_A")
    @classmethod
    def _resolution(cls, v: float | None) -> float | None:
        return None if v is None else _positive_finite(v, "resolution_A")

    @field_validator("symmetry")
    @classmethod
    def _symmetry(cls, v: str) -> str:
        return check_name(v, "symmetry")

    @field_validator("map", "half1", "half2", "mask", "particles")
    @classmethod
    def _files(cls, v: str | None, info: Any) -> str | None:
        return None if v is None else check_relative_file(v, f"{info.field_name} file name")

    def path(self, field: str, base: Path) -> Path:
        """The file named by ``map``, ``half1``, ``half2``, ``mask`` or ``particles``, inside the record's
        folder ``base`` (KeyError when the record has none)."""
        name = getattr(self, field)
        if name is None:
            raise KeyError(f"this average has no {field} file")
        return resolve_in(base, name, field)

    def save(self, folder: Path) -> Path:
        return _save(self, guarded_path(Path(folder), "average.json"))

    @classmethod
    def load(cls, path: Path) -> tuple[AverageRecord, Path]:
        """From ``average.json`` (or its folder); returns the record and its folder."""
        return _load(cls, path, "average.json")


def poses_to_table(df: Any, rotations: Any, shifts_A: Any, scores: Any | None = None,
                   half_sets: Any | None = None) -> Any:
    """A copy of a particles table (pandas) with refined poses: RELION angles from ``rotations`` (m, 3, 3),
    ``rlnOriginX/Y/ZAngst = −shifts_A`` (RELION subtracts the origin: particle centre = coordinate − origin,
    while ``x_tomogram = R x_ref + t`` puts the centre at coordinate + t), scores as rlnLogLikeliContribution,
    half sets as rlnRandomSubset."""
    import numpy as np

    from tomoguide.compute.euler import matrix_to_euler

    out = df.reset_index(drop=True).copy()
    ang = matrix_to_euler(np.asarray(rotations, np.float64))
    for k, c in enumerate(("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")):
        out[c] = ang[:, k]
    sh = np.asarray(shifts_A, np.float64).reshape(-1, 3)
    base = np.zeros_like(sh)
    if all(c in out.columns for c in ("rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst")):
        base = out[["rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst"]].to_numpy(np.float64)
    for k, c in enumerate(("rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst")):
        out[c] = base[:, k] - sh[:, k]
    if scores is not None:
        out["rlnLogLikeliContribution"] = np.asarray(scores, np.float64)
    if half_sets is not None:
        out["rlnRandomSubset"] = np.asarray(half_sets, np.int64)
    return out


def table_rotations(df: Any) -> Any:
    """Rotation matrices (m, 3, 3) of a particles table's RELION angles (identity where absent)."""
    import numpy as np

    from tomoguide.compute.euler import euler_to_matrix

    cols = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]
    if not all(c in df.columns for c in cols):
        return np.repeat(np.eye(3)[None], len(df), axis=0)
    return euler_to_matrix(df[cols].to_numpy(np.float64))


def write_average(folder: Path, *, voxel_A: float, symmetry: str, merged: Any, particles: Any,
                  optics: dict[str, Any], half1: Any | None = None, half2: Any | None = None,
                  mask: Any | None = None, fsc: FSCCurve | None = None, history: list[dict[str, Any]] | None = None,
                  info: dict[str, Any] | None = None) -> Path:
    """Write the maps (MRC, voxel size in the header), ``particles.star`` and ``average.json`` into ``folder`` (the
    run folder: every file through :func:`~tomoguide.integrity.guarded_path`); returns the folder."""
    from tomoguide.compute.io.mrc import write_mrc
    from tomoguide.compute.io.star import write_particles_star

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_mrc(guarded_path(folder, "map.mrc"), merged, voxel_A)
    names: dict[str, str | None] = {"half1": None, "half2": None, "mask": None}
    for key, vol in (("half1", half1), ("half2", half2), ("mask", mask)):
        if vol is not None:
            write_mrc(guarded_path(folder, f"{key}.mrc"), vol, voxel_A)
            names[key] = f"{key}.mrc"
    write_particles_star(guarded_path(folder, "particles.star"), particles, optics)
    rec = AverageRecord(voxel_A=voxel_A, box_px=int(merged.shape[0]), symmetry=symmetry,
                        resolution_A=None if fsc is None else fsc.resolution_A, fsc=fsc,
                        history=history or [], info=info or {}, **names)
    rec.save(folder)
    return folder


def prior_axes(df: Any) -> Any:
    """Each particle's prior direction of the reference z axis (m, 3) from RELION's ``rlnAngleTiltPrior`` and
    ``rlnAnglePsiPrior`` (``R ẑ`` depends on tilt and psi only), or None when the table has no priors."""
    import numpy as np

    from tomoguide.compute.euler import euler_to_matrix

    if not {"rlnAngleTiltPrior", "rlnAnglePsiPrior"} <= set(df.columns):
        return None
    tp = df[["rlnAngleTiltPrior", "rlnAnglePsiPrior"]].to_numpy(np.float64)
    ang = np.column_stack([np.zeros(len(tp)), tp])
    axes = euler_to_matrix(np.nan_to_num(ang))[:, :, 2]
    axes[~np.isfinite(tp).all(axis=1)] = np.nan
    return axes
