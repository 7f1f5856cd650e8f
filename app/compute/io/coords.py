"""One particle table for every source of particle coordinates: RELION 4/5 STAR, plain text, Scipion sqlite
(and IMOD point models through :meth:`ParticleTable.from_points`).

Conventions of :class:`ParticleTable` (what every reader returns and every writer takes):

* ``xyz_px``: voxel coordinates ``(x, y, z)`` of the particle centre in the named tomogram, 0-based,
  voxel centres at integers (voxel ``[z, y, x]`` of a numpy array read from the MRC file has its centre
  at ``(x, y, z)``), in voxels of size ``pixel_size_A`` (Å). Origin = the corner voxel.
* ``angles_deg``: RELION ZYZ Euler angles ``(rot, tilt, psi)`` in degrees
  (:mod:`tomoguide.compute.euler`: ``A = Rz(psi) Ry(tilt) Rz(rot)``, RELION's matrices), giving the
  particle's orientation in the tomogram frame; None when the source has no orientations.

RELION 5 centred coordinates (``rlnCenteredCoordinateX/Y/ZAngst``): Å from the tomogram centre,
where RELION 5 takes the centre at **size / 2** (float division, not (size - 1) / 2):
``TomogramSet::loadTomogram`` sets ``centre = (w0/2.0, h0/2.0, d0/2.0)`` with ``w0, h0, d0`` =
``rlnTomoSizeX/Y/Z`` in unbinned tilt-series pixels, and ``ParticleSet::getParticleCoordDecenteredPixel``
computes ``position_px = centred_A / rlnTomoTiltSeriesPixelSize + centre`` (0-based since RELION 4.1,
which dropped the old ``+1``). Hence here::

    centred_A = (xyz_px - shape / 2) * pixel_size_A

with ``shape`` the tomogram size *in voxels of pixel_size_A*. For a tomogram binned by ``b`` from an
unbinned size ``N`` pass ``shape = N / b`` (possibly fractional) to match RELION exactly; an even ``N``
divisible by ``b`` makes ``N / b`` the binned tomogram's size. RELION's full position subtracts the
origin shifts, rotated by the subtomogram orientation: ``position = centred/ps + centre
- A_subtomo @ origin_A / ps``, and the full orientation is ``A_subtomo @ A_particle``
(``ParticleSet::getPosition`` and ``getMatrix3x3``); :meth:`ParticleTable.from_relion5` folds both in.
RELION 4 pixel coordinates ``rlnCoordinateX/Y/Z`` are read as 0-based positions in pixels of the
tilt series (RELION ≥ 4.1 interpretation).

Scipion (scipion-em-tomo) ``SetOfCoordinates3D`` sqlite: the flat layout of pyworkflow's
``SqliteFlatDb`` — table ``Properties(key, value)`` (``self`` = ``SetOfCoordinates3D``,
``_samplingRate`` (Å/px), ``_boxSize`` (px), ``_size``), table ``Classes(id, label_property,
column_name, class_name)`` mapping attribute names to generic columns (``self`` -> ``c00`` =
``Coordinate3D``, ``_x`` -> ``c01`` ...), and table ``Objects(id, enabled, label, comment, creation,
c01, c02, ...)`` with one row per coordinate. Attributes of ``Coordinate3D``: ``_x``, ``_y``, ``_z``
(Float; Integer in scipion-em-tomo < 3.0), ``_volId`` (Integer), ``_eulerMatrix`` (Transform, no value)
and ``_eulerMatrix._matrix`` (Matrix: JSON text of a 4x4 list), ``_groupId``, ``_tomoId`` (String: the
tilt-series id = tomogram name), ``_score``. Position convention: Scipion stores ``_x/_y/_z`` in voxels
**relative to the tomogram's origin** (``Coordinate3D.getPosition(const.SCIPION)``); since
scipion-em-tomo 3 (2021+) a tomogram's default origin (``Volume.getOrigin(force=True)``) has shifts
``-dim/2 * samplingRate``, i.e. the stored values are relative to the centre ``dim / 2``, and
``getPosition(BOTTOM_LEFT_CORNER)`` returns ``stored + dim/2``. Older scipion-em-tomo versions stored
bottom-left-corner coordinates directly. The origin itself lives in the tomograms' set, not in the
coordinates file, so the reader takes ``origin="center"`` (default, with the tomogram shapes) or
``origin="corner"``. Orientation: Scipion's matrix is the *inverse* of RELION's
(scipion-em-reliontomo builds it as ``inv(euler_matrix(-rot, -tilt, -psi, 'szyz'))``), so its 3x3
rotation part is ``A.T``; the translation column is 0 for coordinates.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

from ..euler import euler_to_matrix, matrix_to_euler, rotation_angle_deg
from . import star
from .errors import FormatError, problem

Shape = tuple[float, float, float]
Shapes = Mapping[str, Sequence[float]] | Sequence[float]

#: RELION labels tried (in order) for a per-particle score
SCORE_LABELS = ("rlnAutopickFigureOfMerit", "rlnLCCmax", "rlnParticleFigureOfMerit")


@dataclass
class ParticleTable:
    """Particles of one or more tomograms in one table (conventions in the module docstring).

    ``tomo_name``: ``(n,)`` str array; ``xyz_px``: ``(n, 3)`` float64 voxel coordinates (x, y, z),
    0-based, corner origin; ``pixel_size_A``: voxel size (Å) of those coordinates or None if unknown;
    ``angles_deg``: ``(n, 3)`` float64 RELION (rot, tilt, psi) or None; ``score``: ``(n,)`` float64 or
    None.
    """

    tomo_name: NDArray[np.str_]
    xyz_px: NDArray[np.float64]
    pixel_size_A: float | None = None
    angles_deg: NDArray[np.float64] | None = None
    score: NDArray[np.float64] | None = None

    def __post_init__(self) -> None:
        self.xyz_px = np.asarray(self.xyz_px, dtype=np.float64).reshape(-1, 3)
        n = self.xyz_px.shape[0]
        names = np.asarray(self.tomo_name)
        if names.ndim == 0:
            names = np.full(n, str(names))
        self.tomo_name = names.astype(str)
        if self.tomo_name.shape != (n,):
            raise ValueError(f"tomo_name must have shape ({n},), got {self.tomo_name.shape}")
        if self.angles_deg is not None:
            self.angles_deg = np.asarray(self.angles_deg, dtype=np.float64).reshape(-1, 3)
            if self.angles_deg.shape[0] != n:
                raise ValueError(f"angles_deg must have shape ({n}, 3), got {self.angles_deg.shape}")
        if self.score is not None:
            self.score = np.asarray(self.score, dtype=np.float64).reshape(-1)
            if self.score.shape != (n,):
                raise ValueError(f"score must have shape ({n},), got {self.score.shape}")
        if self.pixel_size_A is not None:
            self.pixel_size_A = float(self.pixel_size_A)
            if not self.pixel_size_A > 0:
                raise ValueError(f"pixel_size_A must be positive, got {self.pixel_size_A}")

    def __len__(self) -> int:
        return int(self.xyz_px.shape[0])

    @property
    def tomograms(self) -> list[str]:
        """Distinct tomogram names in order of first appearance."""
        _, first = np.unique(self.tomo_name, return_index=True)
        return [str(self.tomo_name[i]) for i in sorted(first)]

    def select(self, mask: ArrayLike) -> ParticleTable:
        """Subset by a boolean mask ``(n,)`` or an index array (a new table; arrays are copied)."""
        m = np.asarray(mask)
        return ParticleTable(
            tomo_name=self.tomo_name[m].copy(),
            xyz_px=self.xyz_px[m].copy(),
            pixel_size_A=self.pixel_size_A,
            angles_deg=None if self.angles_deg is None else self.angles_deg[m].copy(),
            score=None if self.score is None else self.score[m].copy(),
        )

    def matrices(self) -> NDArray[np.float64] | None:
        """RELION rotation matrices ``(n, 3, 3)`` of ``angles_deg`` (None without angles)."""
        return None if self.angles_deg is None else euler_to_matrix(self.angles_deg)

    def rescaled(self, pixel_size_A: float) -> ParticleTable:
        """The same particles in voxels of another size (``xyz * old / new``; corner origin kept)."""
        if self.pixel_size_A is None:
            raise ValueError("rescaled: this table has no pixel size")
        out = self.select(np.arange(len(self)))
        out.xyz_px = self.xyz_px * (self.pixel_size_A / float(pixel_size_A))
        out.pixel_size_A = float(pixel_size_A)
        return out

    def to_angstrom_centered(self, tomo_shape_px: Shapes) -> NDArray[np.float64]:
        """RELION 5 centred coordinates (Å): ``(xyz_px - shape/2) * pixel_size_A``, ``(n, 3)``.

        ``tomo_shape_px``: ``(nx, ny, nz)`` for every particle, or ``{tomo_name: (nx, ny, nz)}``, in
        voxels of ``pixel_size_A`` (see the module docstring for binned tomograms).
        """
        if self.pixel_size_A is None:
            raise ValueError("to_angstrom_centered: the table has no pixel size")
        return (self.xyz_px - _shape_rows(self.tomo_name, tomo_shape_px) / 2.0) * self.pixel_size_A

    def to_relion5_df(self, tomo_shape_px: Shapes) -> pd.DataFrame:
        """A RELION 5 particles table: ``rlnTomoName``, centred Å coordinates, angles, score."""
        cen = self.to_angstrom_centered(tomo_shape_px)
        cols: dict[str, Any] = {"rlnTomoName": self.tomo_name.astype(object)}
        for k, lab in enumerate(star.CENTERED_XYZ):
            cols[lab] = cen[:, k]
        if self.angles_deg is not None:
            for k, lab in enumerate(star.ANGLES):
                cols[lab] = self.angles_deg[:, k]
        if self.score is not None:
            cols[SCORE_LABELS[0]] = self.score
        return pd.DataFrame(cols)

    @classmethod
    def from_relion5(
        cls,
        df: pd.DataFrame,
        tomo_shapes: Shapes | None,
        pixel_size_A: float,
        *,
        coord_pixel_size_A: float | None = None,
    ) -> ParticleTable:
        """Particles from a RELION particles table (RELION 5 centred Å, or RELION 4 pixels).

        ``tomo_shapes``: ``{rlnTomoName: (nx, ny, nz)}`` (or one shape for all) in voxels of
        ``pixel_size_A``; needed for centred coordinates only. ``pixel_size_A``: voxel size of the
        returned coordinates. ``coord_pixel_size_A``: pixel size of RELION 4 ``rlnCoordinateX/Y/Z``
        (default ``pixel_size_A``). Origin shifts ``rlnOriginX/Y/ZAngst`` and subtomogram orientations
        ``rlnTomoSubtomogramRot/Tilt/Psi`` are folded into positions and angles as RELION 5 does.
        """
        ps = float(pixel_size_A)
        names = df["rlnTomoName"].astype(str).to_numpy()
        n = len(df)
        if all(c in df.columns for c in star.CENTERED_XYZ):
            if tomo_shapes is None:
                raise ValueError("from_relion5: centred coordinates need the tomogram shapes")
            pos_A = df[list(star.CENTERED_XYZ)].to_numpy(dtype=np.float64)
            xyz = pos_A / ps + _shape_rows(names, tomo_shapes) / 2.0
        elif all(c in df.columns for c in star.PIXEL_XYZ):
            cps = ps if coord_pixel_size_A is None else float(coord_pixel_size_A)
            xyz = df[list(star.PIXEL_XYZ)].to_numpy(dtype=np.float64) * (cps / ps)
        else:
            raise ValueError("from_relion5: no rlnCenteredCoordinate*Angst or rlnCoordinate* columns")
        a_sub = (
            euler_to_matrix(df[list(star.SUBTOMO_ANGLES)].to_numpy(dtype=np.float64))
            if all(c in df.columns for c in star.SUBTOMO_ANGLES)
            else None
        )
        if all(c in df.columns for c in star.ORIGINS_A):
            origin_A = df[list(star.ORIGINS_A)].to_numpy(dtype=np.float64)
            if a_sub is not None:
                origin_A = np.einsum("nij,nj->ni", a_sub, origin_A)
            xyz = xyz - origin_A / ps
        angles = None
        if all(c in df.columns for c in star.ANGLES):
            a_part = euler_to_matrix(df[list(star.ANGLES)].to_numpy(dtype=np.float64))
            angles = matrix_to_euler(a_sub @ a_part) if a_sub is not None else df[list(star.ANGLES)].to_numpy(dtype=np.float64)
        elif a_sub is not None:
            angles = matrix_to_euler(a_sub)
        score = None
        for lab in SCORE_LABELS:
            if lab in df.columns:
                score = df[lab].to_numpy(dtype=np.float64)
                break
        return cls(tomo_name=names.reshape(n), xyz_px=xyz, pixel_size_A=ps, angles_deg=angles, score=score)

    @classmethod
    def from_points(
        cls, tomo_name: str, points_xyz: ArrayLike, pixel_size_A: float | None
    ) -> ParticleTable:
        """Particles at ``points_xyz`` ``(n, 3)`` (x, y, z voxels, 0-based) of one tomogram, no angles.

        For IMOD model points: IMOD's ``imodinfo``/``model2point`` coordinates are already 0-based
        voxel coordinates with the same x, y, z order.
        """
        pts = np.asarray(points_xyz, dtype=np.float64).reshape(-1, 3)
        return cls(tomo_name=np.full(len(pts), str(tomo_name)), xyz_px=pts, pixel_size_A=pixel_size_A)

    def isclose(self, other: ParticleTable, *, atol_px: float = 1e-4, atol_deg: float = 1e-4) -> bool:
        """True if both tables hold the same particles in the same order (for tests).

        Names equal; positions within ``atol_px``; pixel sizes equal (relative 1e-9) or both None;
        orientations equal within ``atol_deg`` compared as rotations (so that equivalent Euler triples
        count as equal), or both None; scores within 1e-6 or both None.
        """
        return not self.differences(other, atol_px=atol_px, atol_deg=atol_deg)

    def differences(self, other: ParticleTable, *, atol_px: float = 1e-4, atol_deg: float = 1e-4) -> list[str]:
        """Human-readable list of what differs (empty when :meth:`isclose`)."""
        out: list[str] = []
        if len(self) != len(other):
            return [f"lengths {len(self)} != {len(other)}"]
        if not np.array_equal(self.tomo_name, other.tomo_name):
            out.append("tomo_name differs")
        err = float(np.max(np.abs(self.xyz_px - other.xyz_px))) if len(self) else 0.0
        if err > atol_px:
            out.append(f"xyz_px differs by up to {err:.3g} px")
        if (self.pixel_size_A is None) != (other.pixel_size_A is None) or (
            self.pixel_size_A is not None
            and other.pixel_size_A is not None
            and not math.isclose(self.pixel_size_A, other.pixel_size_A, rel_tol=1e-9)
        ):
            out.append(f"pixel_size_A {self.pixel_size_A} != {other.pixel_size_A}")
        ma, mb = self.matrices(), other.matrices()
        if (ma is None) != (mb is None):
            out.append("angles present in only one table")
        elif ma is not None and mb is not None and len(self):
            d = float(np.max(rotation_angle_deg(ma, mb)))
            if d > atol_deg:
                out.append(f"orientations differ by up to {d:.3g} degrees")
        if (self.score is None) != (other.score is None):
            out.append("score present in only one table")
        elif self.score is not None and other.score is not None and not np.allclose(self.score, other.score, atol=1e-6):
            out.append("score differs")
        return out


from_points = ParticleTable.from_points
from_relion5 = ParticleTable.from_relion5


def concat(tables: Sequence[ParticleTable]) -> ParticleTable:
    """Concatenate tables with the same pixel size (angles/score kept only when all tables have them)."""
    if not tables:
        raise ValueError("concat: no tables")
    sizes = {t.pixel_size_A for t in tables}
    if len(sizes) > 1:
        raise ValueError(f"concat: different pixel sizes {sorted(map(str, sizes))}")
    angles = None
    if all(t.angles_deg is not None for t in tables):
        angles = np.concatenate([t.angles_deg for t in tables])  # type: ignore[misc]
    score = None
    if all(t.score is not None for t in tables):
        score = np.concatenate([t.score for t in tables])  # type: ignore[misc]
    return ParticleTable(
        tomo_name=np.concatenate([t.tomo_name for t in tables]),
        xyz_px=np.concatenate([t.xyz_px for t in tables]),
        pixel_size_A=tables[0].pixel_size_A,
        angles_deg=angles,
        score=score,
    )


def _shape_rows(names: NDArray[np.str_], shapes: Shapes) -> NDArray[np.float64]:
    """``(n, 3)`` shapes for each particle from one shape or ``{name: shape}``."""
    if isinstance(shapes, Mapping):
        missing = sorted(set(names.tolist()) - set(map(str, shapes.keys())))
        if missing:
            raise KeyError(f"no tomogram shape for {', '.join(missing)}")
        lut = {str(k): np.asarray(v, dtype=np.float64).reshape(3) for k, v in shapes.items()}
        if len(names) == 0:
            return np.zeros((0, 3))
        return np.stack([lut[str(nm)] for nm in names])
    arr = np.asarray(shapes, dtype=np.float64).reshape(3)
    return np.broadcast_to(arr, (len(names), 3)).copy()


# ---- RELION -------------------------------------------------------------------------------------------


def read_relion_particles(
    path: str | PathLike[str],
    tomo_shapes: Shapes | None,
    pixel_size_A: float | None = None,
    *,
    strict: bool = True,
) -> ParticleTable:
    """Particles of a RELION 5 (or 4) particles STAR as a :class:`ParticleTable`.

    ``tomo_shapes``: ``{rlnTomoName: (nx, ny, nz)}`` in voxels of ``pixel_size_A``.
    ``pixel_size_A``: voxel size of the returned coordinates; default the optics table's
    ``rlnTomoTiltSeriesPixelSize`` (then the shapes are unbinned tilt-series sizes, ``rlnTomoSizeX/Y/Z``).
    RELION 4 pixel coordinates are taken in pixels of the optics pixel size (or ``pixel_size_A``).
    """
    ps_star = star.read_particles_star(path, strict=strict)
    optics_ps = ps_star.pixel_size_A()
    ps = pixel_size_A if pixel_size_A is not None else optics_ps
    if ps is None:
        raise FormatError(path, "data_optics/rlnTomoTiltSeriesPixelSize", "no pixel size in the file; pass pixel_size_A")
    try:
        return ParticleTable.from_relion5(
            ps_star.particles, tomo_shapes, ps, coord_pixel_size_A=optics_ps if optics_ps is not None else ps
        )
    except KeyError as exc:
        raise FormatError(path, "data_particles/rlnTomoName", str(exc.args[0])) from exc


def write_relion_particles(
    path: str | PathLike[str],
    table: ParticleTable,
    tomo_shapes: Shapes,
    *,
    optics: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``table`` as a RELION 5 particles STAR (centred Å; see :func:`star.write_particles_star`).

    ``optics`` defaults to ``{"rlnTomoTiltSeriesPixelSize": table.pixel_size_A}`` — i.e. the tomogram
    shapes are then taken as the tilt-series sizes; give RELION's full optics group when known.
    """
    if table.pixel_size_A is None:
        raise ValueError("write_relion_particles: the table has no pixel size")
    opt = dict(optics) if optics else {"rlnTomoTiltSeriesPixelSize": table.pixel_size_A}
    return star.write_particles_star(path, table.to_relion5_df(tomo_shapes), opt)


# ---- plain text ---------------------------------------------------------------------------------------

_HEADER_KEY = re.compile(r"^#\s*(tomo_name|pixel_size_A)\s*[:=]\s*(\S+)\s*$")


def read_text_coords(
    path: str | PathLike[str],
    *,
    tomo_name: str,
    pixel_size_A: float | None = None,
    strict: bool = True,
) -> ParticleTable:
    """Read ``x y z [rot tilt psi [score]]`` rows (whitespace and/or comma separated).

    Coordinates are 0-based voxel coordinates (corner origin), angles RELION (rot, tilt, psi) degrees.
    Lines starting with ``#`` are comments (``# pixel_size_A: 1.35`` in a comment is used when
    ``pixel_size_A`` is None); text after ``#`` on a line is ignored; a first line of only words
    (``x,y,z``) is a column header. Every row must have 3, 6 or 7 fields, as many as the first row.
    Errors name the line (``FILE: line N: ...``); permissive mode skips bad rows with a warning.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    rows: list[list[float]] = []
    ncol: int | None = None
    header_ps: float | None = None
    seen_data = False
    with open(p, encoding="utf-8", errors="replace") as fh:
        for lineno, raw in enumerate(fh, start=1):
            stripped = raw.strip()
            if stripped.startswith("#"):
                m = _HEADER_KEY.match(stripped)
                if m and m.group(1) == "pixel_size_A":
                    try:
                        header_ps = float(m.group(2))
                    except ValueError:
                        problem(strict, p, f"line {lineno}", f"pixel_size_A is not a number: {m.group(2)!r}")
                continue
            line = stripped.split("#", 1)[0].strip()
            if not line:
                continue
            fields = [f for f in re.split(r"[,\s]+", line) if f]
            where = f"line {lineno}"
            try:
                values = [float(f) for f in fields]
            except ValueError:
                if not seen_data and not any(_is_number(f) for f in fields):
                    seen_data = True  # column header such as "x,y,z"
                    continue
                problem(strict, p, where, f"not a row of numbers: {line[:60]!r}")
                continue
            seen_data = True
            if len(values) not in (3, 6, 7):
                problem(strict, p, where, f"expected 3 (x y z), 6 (+ rot tilt psi) or 7 (+ score) fields, found {len(values)}")
                continue
            if ncol is None:
                ncol = len(values)
            elif len(values) != ncol:
                problem(strict, p, where, f"expected {ncol} fields like the first row, found {len(values)}")
                continue
            if not all(math.isfinite(v) for v in values):
                problem(strict, p, where, "non-finite value")
                continue
            rows.append(values)
    if ncol is None:
        problem(strict, p, "rows", "no coordinates found (an empty file, or cut short?)")
        ncol = 3
    arr = np.asarray(rows, dtype=np.float64).reshape(-1, ncol)
    ps = pixel_size_A if pixel_size_A is not None else header_ps
    return ParticleTable(
        tomo_name=np.full(len(arr), str(tomo_name)),
        xyz_px=arr[:, :3],
        pixel_size_A=ps,
        angles_deg=arr[:, 3:6] if ncol >= 6 else None,
        score=arr[:, 6] if ncol == 7 else None,
    )


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def write_text_coords(path: str | PathLike[str], table: ParticleTable, *, delimiter: str = " ") -> Path:
    """Write one tomogram's particles as ``x y z [rot tilt psi [score]]`` with a commented header.

    The header records ``tomo_name`` and ``pixel_size_A``; values are written with 6 decimals.
    Raises ``ValueError`` for a table with particles of several tomograms (write one file each).
    """
    names = table.tomograms
    if len(names) > 1:
        raise ValueError(f"write_text_coords: {len(names)} tomograms in the table; write one file per tomogram")
    p = Path(path)
    cols = [table.xyz_px]
    what = "x y z (voxels, 0-based, corner origin)"
    if table.angles_deg is not None:
        cols.append(table.angles_deg)
        what += " rot tilt psi (RELION ZYZ, degrees)"
        if table.score is not None:
            cols.append(table.score[:, None])
            what += " score"
    data = np.hstack(cols) if cols else np.zeros((0, 3))
    lines = [f"# tomoguide particle coordinates: {what}"]
    if names:
        lines.append(f"# tomo_name: {names[0]}")
    if table.pixel_size_A is not None:
        lines.append(f"# pixel_size_A: {table.pixel_size_A!r}")
    lines += [delimiter.join(f"{v:.6f}" for v in row) for row in data]
    tmp = p.with_name(f".{p.name}.tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(p)
    return p


# ---- Scipion sqlite -----------------------------------------------------------------------------------

Origin = Literal["center", "corner"]

#: Coordinate3D attributes written by :func:`write_scipion_sqlite`: (label_property, class_name, SQL type)
_SCIPION_ATTRS = (
    ("_x", "Float", "REAL"),
    ("_y", "Float", "REAL"),
    ("_z", "Float", "REAL"),
    ("_volId", "Integer", "INTEGER"),
    ("_eulerMatrix", "Transform", "TEXT"),
    ("_eulerMatrix._matrix", "Matrix", "TEXT"),
    ("_groupId", "Integer", "INTEGER"),
    ("_tomoId", "String", "TEXT"),
    ("_score", "Float", "REAL"),
)


def write_scipion_sqlite(
    path: str | PathLike[str],
    table: ParticleTable,
    *,
    tomo_shapes: Shapes | None = None,
    origin: Origin = "center",
    box_size_px: int = 54,
) -> Path:
    """Write a Scipion ``SetOfCoordinates3D`` sqlite (layout in the module docstring).

    ``origin="center"`` (Scipion ≥ 3 default) stores ``xyz_px - shape/2`` and needs ``tomo_shapes``
    (voxels of ``table.pixel_size_A``); ``origin="corner"`` stores ``xyz_px``. Angles go into
    ``_eulerMatrix._matrix`` as Scipion's matrix (rotation ``A.T`` of RELION's ``A``, zero translation;
    identity when the table has no angles). ``_volId`` numbers the tomograms 1, 2, ... in order of first
    appearance. An existing file is replaced.
    """
    p = Path(path)
    if origin not in ("center", "corner"):
        raise ValueError(f"origin must be 'center' or 'corner', got {origin!r}")
    xyz = table.xyz_px.copy()
    if origin == "center":
        if tomo_shapes is None:
            raise ValueError("write_scipion_sqlite: origin='center' needs tomo_shapes")
        xyz = xyz - _shape_rows(table.tomo_name, tomo_shapes) / 2.0
    vol_ids = {name: k + 1 for k, name in enumerate(table.tomograms)}
    mats = table.matrices()
    tmp = p.with_name(f".{p.name}.tmp")
    if tmp.exists():
        tmp.unlink()
    con = sqlite3.connect(tmp)
    try:
        cur = con.cursor()
        cur.execute("CREATE TABLE Properties (key TEXT UNIQUE, value TEXT DEFAULT NULL)")
        cur.execute(
            "CREATE TABLE Classes (id INTEGER PRIMARY KEY AUTOINCREMENT, label_property TEXT UNIQUE, "
            "column_name TEXT UNIQUE, class_name TEXT DEFAULT NULL)"
        )
        cur.execute("INSERT INTO Classes (label_property, column_name, class_name) VALUES ('self', 'c00', 'Coordinate3D')")
        colnames = []
        for k, (label, cls_name, _sql) in enumerate(_SCIPION_ATTRS, start=1):
            col = f"c{k:02d}"
            colnames.append(col)
            cur.execute(
                "INSERT INTO Classes (label_property, column_name, class_name) VALUES (?, ?, ?)", (label, col, cls_name)
            )
        coldefs = ", ".join(f"{c} {sql} DEFAULT NULL" for c, (_l, _c, sql) in zip(colnames, _SCIPION_ATTRS))
        cur.execute(
            "CREATE TABLE Objects (id INTEGER PRIMARY KEY, enabled INTEGER DEFAULT 1, label TEXT DEFAULT NULL, "
            f"comment TEXT DEFAULT NULL, creation DATE, {coldefs})"
        )
        props = {
            "self": "SetOfCoordinates3D",
            "_size": str(len(table)),
            "_boxSize": str(int(box_size_px)),
            "_samplingRate": None if table.pixel_size_A is None else repr(table.pixel_size_A),
            "_precedentsPointer": None,
            "_streamState": "2",
        }
        cur.executemany("INSERT INTO Properties (key, value) VALUES (?, ?)", list(props.items()))
        rows = []
        for i in range(len(table)):
            m = np.eye(4)
            if mats is not None:
                m[:3, :3] = mats[i].T
            rows.append(
                (
                    i + 1,
                    1,
                    "",
                    "",
                    float(xyz[i, 0]),
                    float(xyz[i, 1]),
                    float(xyz[i, 2]),
                    vol_ids[str(table.tomo_name[i])],
                    None,
                    json.dumps(m.tolist()),
                    0,
                    str(table.tomo_name[i]),
                    0.0 if table.score is None else float(table.score[i]),
                )
            )
        values = ", ".join("?" for _ in _SCIPION_ATTRS)
        cur.executemany(
            f"INSERT INTO Objects (id, enabled, label, comment, creation, {', '.join(colnames)}) "
            f"VALUES (?, ?, ?, ?, datetime('now'), {values})",
            rows,
        )
        con.commit()
    finally:
        con.close()
    tmp.replace(p)
    return p


def read_scipion_sqlite(
    path: str | PathLike[str],
    *,
    tomo_shapes: Shapes | None = None,
    origin: Origin = "center",
    pixel_size_A: float | None = None,
    include_disabled: bool = False,
    strict: bool = True,
) -> ParticleTable:
    """Read a Scipion ``SetOfCoordinates3D`` sqlite as corner-origin voxel coordinates.

    ``origin``: where the stored ``_x/_y/_z`` are measured from (module docstring): ``"center"``
    (scipion-em-tomo ≥ 3 default; needs ``tomo_shapes`` = ``{tomo name: (nx, ny, nz)}`` in voxels of the
    set's sampling rate) or ``"corner"``. ``pixel_size_A``: default the set's ``_samplingRate``.
    Tomogram names come from ``_tomoId`` (else the stem of ``_volName``, else ``_volId``). Rows with
    ``enabled = 0`` are skipped unless ``include_disabled``. Angles from ``_eulerMatrix._matrix`` (None
    when the column is absent; a missing or unreadable matrix is an error in strict mode, identity
    otherwise). Errors name the table/column.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    if origin not in ("center", "corner"):
        raise ValueError(f"origin must be 'center' or 'corner', got {origin!r}")
    try:
        con = sqlite3.connect(f"file:{p}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise FormatError(p, None, f"not an sqlite file ({exc})") from exc
    try:
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        except sqlite3.DatabaseError as exc:
            raise FormatError(p, None, f"not an sqlite file ({exc})") from exc
        if "Objects" not in tables:
            raise FormatError(p, "Objects", "missing table (not a Scipion set)")
        mapping: dict[str, str] = {}
        if "Classes" in tables:
            for label, col in con.execute("SELECT label_property, column_name FROM Classes"):
                mapping[str(label)] = str(col)
        objcols = [r[1] for r in con.execute("PRAGMA table_info(Objects)")]
        for c in objcols:  # also accept a table whose columns carry the attribute names themselves
            mapping.setdefault(c, c)
        props: dict[str, Any] = {}
        if "Properties" in tables:
            props = {str(k): v for k, v in con.execute("SELECT key, value FROM Properties")}
        for need in ("_x", "_y", "_z"):
            if need not in mapping or mapping[need] not in objcols:
                raise FormatError(p, f"Classes/{need}", "missing coordinate column")
        wanted = ["id", "enabled"] + [
            mapping[k] for k in ("_x", "_y", "_z", "_tomoId", "_volName", "_volId", "_eulerMatrix._matrix", "_score")
            if k in mapping and mapping[k] in objcols
        ]
        df = pd.read_sql_query(f"SELECT {', '.join(dict.fromkeys(wanted))} FROM Objects ORDER BY id", con)
    finally:
        con.close()
    if not include_disabled and "enabled" in df.columns:
        df = df[df["enabled"].fillna(1).astype(int) != 0].reset_index(drop=True)

    def col(label: str) -> pd.Series | None:
        c = mapping.get(label)
        return df[c] if c is not None and c in df.columns else None

    xyz = np.stack([pd.to_numeric(col(k), errors="coerce").to_numpy(dtype=np.float64) for k in ("_x", "_y", "_z")], axis=1)  # type: ignore[arg-type]
    bad = ~np.all(np.isfinite(xyz), axis=1)
    if bad.any():
        problem(strict, p, "Objects/_x", f"{int(bad.sum())} coordinates are not numbers (first id {int(df['id'][bad].iloc[0])})")
    names_col = col("_tomoId")
    if names_col is not None and names_col.notna().all():
        names = names_col.astype(str).to_numpy()
    elif col("_volName") is not None:
        names = np.array([Path(str(v)).stem for v in col("_volName")])  # type: ignore[union-attr]
    elif col("_volId") is not None:
        names = col("_volId").astype(str).to_numpy()  # type: ignore[union-attr]
    else:
        problem(strict, p, "Classes/_tomoId", "no tomogram name (_tomoId, _volName or _volId)")
        names = np.full(len(df), "")
    if origin == "center":
        if tomo_shapes is None:
            raise ValueError("read_scipion_sqlite: origin='center' needs tomo_shapes")
        try:
            xyz = xyz + _shape_rows(names, tomo_shapes) / 2.0
        except KeyError as exc:
            raise FormatError(p, "Objects/_tomoId", str(exc.args[0])) from exc
    angles = None
    mat_col = col("_eulerMatrix._matrix")
    if mat_col is not None:
        mats = np.empty((len(df), 3, 3))
        for i, text in enumerate(mat_col):
            try:
                m = np.asarray(json.loads(text), dtype=np.float64)
                if m.shape != (4, 4) and m.shape != (3, 3):
                    raise ValueError(f"shape {m.shape}")
                mats[i] = m[:3, :3].T
            except (TypeError, ValueError) as exc:
                problem(strict, p, "Objects/_eulerMatrix._matrix", f"object id {int(df['id'].iloc[i])}: unreadable matrix ({exc})")
                mats[i] = np.eye(3)
        angles = matrix_to_euler(mats)
    score = None
    sc = col("_score")
    if sc is not None:
        score = pd.to_numeric(sc, errors="coerce").to_numpy(dtype=np.float64)
    ps = pixel_size_A
    if ps is None and props.get("_samplingRate") not in (None, "", "None"):
        try:
            ps = float(props["_samplingRate"])
        except ValueError:
            problem(strict, p, "Properties/_samplingRate", f"not a number: {props['_samplingRate']!r}")
    return ParticleTable(tomo_name=names, xyz_px=xyz, pixel_size_A=ps, angles_deg=angles, score=score)


def describe(path: str | PathLike[str]) -> dict[str, Any]:
    """Facts for ``tomoguide inspect``: a Scipion coordinates sqlite or a plain-text coordinate file.

    Coordinates are reported as stored (for Scipion ≥ 3: voxels from the tomogram centre; converting them to
    corner-origin voxels needs the tomogram sizes, which the sqlite does not hold).
    """
    p = Path(path)
    if p.suffix.lower() in (".sqlite", ".db"):
        table = read_scipion_sqlite(p, origin="corner", strict=False)
        kind = "scipion_coordinates_sqlite"
        note = "stored coordinates (Scipion ≥ 3 measures them from the tomogram centre)"
    else:
        table = read_text_coords(p, tomo_name=p.stem, strict=True)
        kind = "text_coordinates"
        note = "voxel coordinates as written"
    xyz = table.xyz_px
    facts: dict[str, Any] = {
        "kind": kind,
        "n_particles": len(table),
        "tomograms": {name: int(np.sum(table.tomo_name == name)) for name in table.tomograms},
        "has_angles": table.angles_deg is not None,
        "pixel_size_A": table.pixel_size_A,
        "coordinates": note,
    }
    if len(table):
        facts["x_range"] = [float(xyz[:, 0].min()), float(xyz[:, 0].max())]
        facts["y_range"] = [float(xyz[:, 1].min()), float(xyz[:, 1].max())]
        facts["z_range"] = [float(xyz[:, 2].min()), float(xyz[:, 2].max())]
    return facts
